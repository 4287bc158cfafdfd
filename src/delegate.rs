//! `ConnectionLike` for the wrappers users hold (a checkout, the extractors, the set-up hook's
//! connection), so that `AsyncCommands` and `query_async(&mut wrapper)` work on them.

/// Implements `ConnectionLike` for a wrapper by handing every call to `self.$field`, so that
/// `AsyncCommands` and `query_async(&mut wrapper)` work on the wrappers users hold.
macro_rules! delegate_connection_like {
    (impl<$($generic:ident),*> $wrapper:ty, $field:tt) => {
        impl<$($generic),*> redis::aio::ConnectionLike for $wrapper {
            fn req_packed_command<'a>(
                &'a mut self,
                cmd: &'a redis::Cmd,
            ) -> redis::RedisFuture<'a, redis::Value> {
                self.$field.req_packed_command(cmd)
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a redis::Pipeline,
                offset: usize,
                count: usize,
            ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
                self.$field.req_packed_commands(pipeline, offset, count)
            }

            fn get_db(&self) -> i64 {
                self.$field.get_db()
            }
        }
    };
}
pub(crate) use delegate_connection_like;
