//! bcrypt hashing and verification, and a small thread pool that runs them away from the
//! server's glommio executors (a bcrypt at cost 10 takes ~50-100 ms of CPU: run inline, a burst
//! of wrong-password attempts would stall every other client on that core).

use std::future::Future;
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use futures_channel::oneshot;

use crate::error::AuthError;

/// Go's `bcrypt.MinCost`.
pub const BCRYPT_COST_MIN: u32 = 4;
/// Go's `bcrypt.MaxCost`.
pub const BCRYPT_COST_MAX: u32 = 31;
/// Go's `bcrypt.DefaultCost`, etcd's --bcrypt-cost default.
pub const BCRYPT_COST_DEFAULT: u32 = 10;

/// etcd's handling of --bcrypt-cost: a cost outside [4, 31] falls back to 10 (etcd logs a
/// warning "use default bcrypt cost instead of the invalid given cost"). Returns the cost to use
/// and whether the given one was replaced.
pub fn effective_bcrypt_cost(given: u32) -> (u32, bool) {
    if (BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&given) {
        (given, false)
    } else {
        (BCRYPT_COST_DEFAULT, true)
    }
}

/// Hashes a password as Go's `bcrypt.GenerateFromPassword` does (`$2a$` form, random salt).
/// Call on the proposing node, before proposing UserAdd / UserChangePassword.
pub fn hash_password(password: &str, cost: u32) -> Vec<u8> {
    let (cost, _) = effective_bcrypt_cost(cost);
    let parts =
        bcrypt::hash_with_result(password, cost).expect("bcrypt with a valid cost cannot fail");
    parts.format_for_version(bcrypt::Version::TwoA).into_bytes()
}

/// Go's `bcrypt.CompareHashAndPassword(hash, password) == nil`. A malformed hash is a mismatch.
pub fn verify_password(password: &str, hash: &[u8]) -> bool {
    match std::str::from_utf8(hash) {
        Ok(h) => bcrypt::verify(password, h).unwrap_or(false),
        Err(_) => false,
    }
}

enum Job {
    Hash {
        password: String,
        cost: u32,
        reply: oneshot::Sender<Vec<u8>>,
    },
    Verify {
        password: String,
        hash: Vec<u8>,
        reply: oneshot::Sender<bool>,
    },
}

/// Pool sizing. `queue_len_max` bounds waiting jobs: past it, calls fail fast with
/// "etcdserver: too many requests" instead of queueing unbounded CPU work.
#[derive(Clone, Copy, Debug)]
pub struct HashPoolOptions {
    pub threads: usize,
    pub queue_len_max: usize,
}

impl Default for HashPoolOptions {
    fn default() -> Self {
        HashPoolOptions {
            threads: 1,
            queue_len_max: 1024,
        }
    }
}

/// Dedicated std threads doing bcrypt, fed by a bounded crossbeam channel; each call returns a
/// `Send` future (a oneshot receiver) that a glommio task can await without blocking its core.
/// Dropping the pool closes the channel; the threads finish queued jobs and exit.
pub struct HashPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl HashPool {
    pub fn new(opts: HashPoolOptions) -> std::io::Result<HashPool> {
        assert!(opts.threads >= 1, "hash pool needs at least one thread");
        assert!(opts.queue_len_max >= 1, "hash pool needs a queue");
        let (tx, rx) = bounded::<Job>(opts.queue_len_max);
        let mut threads = Vec::with_capacity(opts.threads);
        for i in 0..opts.threads {
            let rx: Receiver<Job> = rx.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("ferrite-bcrypt-{i}"))
                    .spawn(move || {
                        for job in rx.iter() {
                            match job {
                                Job::Hash {
                                    password,
                                    cost,
                                    reply,
                                } => {
                                    let _ = reply.send(hash_password(&password, cost));
                                }
                                Job::Verify {
                                    password,
                                    hash,
                                    reply,
                                } => {
                                    let _ = reply.send(verify_password(&password, &hash));
                                }
                            }
                        }
                    })?,
            );
        }
        Ok(HashPool {
            jobs: Some(tx),
            threads,
        })
    }

    fn submit(&self, job: Job) -> Result<(), AuthError> {
        match self.jobs.as_ref().expect("pool open").try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(AuthError::TooManyRequests),
            Err(TrySendError::Disconnected(_)) => panic!("bcrypt pool threads exited"),
        }
    }

    /// Hashes off-thread. Fails immediately with `TooManyRequests` when the queue is full.
    pub fn hash(
        &self,
        password: String,
        cost: u32,
    ) -> impl Future<Output = Result<Vec<u8>, AuthError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let submitted = self.submit(Job::Hash {
            password,
            cost,
            reply,
        });
        async move {
            submitted?;
            Ok(rx.await.expect("bcrypt worker dropped a job"))
        }
    }

    /// Verifies off-thread: `Ok(true)` when the password matches.
    pub fn verify(
        &self,
        password: String,
        hash: Vec<u8>,
    ) -> impl Future<Output = Result<bool, AuthError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let submitted = self.submit(Job::Verify {
            password,
            hash,
            reply,
        });
        async move {
            submitted?;
            Ok(rx.await.expect("bcrypt worker dropped a job"))
        }
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;

    #[test]
    fn hash_is_go_compatible_and_verifies() {
        let h = hash_password("pw", 4);
        assert!(h.starts_with(b"$2a$04$"), "{}", String::from_utf8_lossy(&h));
        assert!(verify_password("pw", &h));
        assert!(!verify_password("pW", &h));
        assert!(!verify_password("pw", b"not a hash"));
        // Openwall crypt_blowfish test vectors (also in Go's x/crypto/bcrypt tests).
        assert!(verify_password(
            "U*U",
            b"$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
        ));
        assert!(verify_password(
            "U*U*",
            b"$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"
        ));
        assert!(!verify_password(
            "U*U*",
            b"$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
        ));
    }

    #[test]
    fn invalid_cost_falls_back_to_default() {
        assert_eq!(effective_bcrypt_cost(3), (10, true));
        assert_eq!(effective_bcrypt_cost(32), (10, true));
        assert_eq!(effective_bcrypt_cost(4), (4, false));
    }

    #[test]
    fn pool_hashes_and_verifies() {
        let pool = HashPool::new(HashPoolOptions {
            threads: 2,
            queue_len_max: 8,
        })
        .unwrap();
        let h = block_on(pool.hash("secret".into(), 4)).unwrap();
        assert!(block_on(pool.verify("secret".into(), h.clone())).unwrap());
        assert!(!block_on(pool.verify("wrong".into(), h)).unwrap());
    }

    #[test]
    fn pool_refuses_when_queue_full() {
        let pool = HashPool::new(HashPoolOptions {
            threads: 1,
            queue_len_max: 1,
        })
        .unwrap();
        // Cost 12 keeps the single worker busy long enough for the queue to fill.
        let futs: Vec<_> = (0..4).map(|_| pool.hash("x".into(), 12)).collect();
        let results: Vec<_> = futs.into_iter().map(block_on).collect();
        assert!(
            results
                .iter()
                .any(|r| r == &Err(AuthError::TooManyRequests)),
            "{results:?}"
        );
        assert!(results.iter().any(|r| r.is_ok()));
    }
}
