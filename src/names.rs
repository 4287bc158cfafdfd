//! The pool names live in this process: a name is a pool's metric label and readiness check, so
//! two live pools with one name would merge their series and list one check twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::config::ConfigError;

static LIVE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// A pool's hold on its name, given back when the pool closes or is dropped.
#[derive(Debug)]
pub(crate) struct NameClaim {
    name: String,
    released: AtomicBool,
}

impl NameClaim {
    /// Takes `name`, or says which pool holds it and what to do.
    pub(crate) fn take(name: &str) -> Result<NameClaim, ConfigError> {
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        if !live
            .get_or_insert_with(HashSet::new)
            .insert(name.to_owned())
        {
            return Err(ConfigError::Invalid {
                setting: "name".to_owned(),
                reason: format!(
                    "a live pool is already named {name:?}; give each pool its own name \
                     (.name(..), REDIS_GUARD_POOL_NAME, or a prefix with from_env_prefixed), \
                     or close the other pool first"
                ),
            });
        }
        Ok(NameClaim {
            name: name.to_owned(),
            released: AtomicBool::new(false),
        })
    }

    /// Gives the name back; later calls do nothing.
    pub(crate) fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(live) = live.as_mut() {
                live.remove(&self.name);
            }
        }
    }
}

impl Drop for NameClaim {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_until_released() {
        let first = NameClaim::take("names-unit").unwrap();
        let error = NameClaim::take("names-unit").unwrap_err().to_string();
        assert!(error.contains("already named \"names-unit\""), "{error}");
        first.release();
        let second = NameClaim::take("names-unit").unwrap();
        drop(first);
        // The first claim's drop must not free the name the second one holds.
        assert!(NameClaim::take("names-unit").is_err());
        drop(second);
        assert!(NameClaim::take("names-unit").is_ok());
    }
}
