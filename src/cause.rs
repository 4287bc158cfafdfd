//! How this crate's own causes (a call never sent, a reply too large) travel through
//! redis-rs's errors: as the inner error of an I/O error, found again by type.

/// The value of type `T` an I/O error carries inside `error`, if it carries one.
pub(crate) fn io_cause<T: std::error::Error + 'static>(error: &redis::RedisError) -> Option<&T> {
    // redis-rs keeps the I/O error behind an `Arc<dyn Error>` as the error's source.
    let source = std::error::Error::source(error)?;
    let io = source.downcast_ref::<std::io::Error>().or_else(|| {
        source
            .downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
            .and_then(|inner| inner.downcast_ref::<std::io::Error>())
    })?;
    io.get_ref()?.downcast_ref::<T>()
}
