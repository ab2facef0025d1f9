//! Bounded, ordered prefetching for sources whose entries are latency-bound (many small
//! S3 GETs, Kubernetes API reads): up to `n` fetches run at once on worker threads, and
//! results come back in input order.
//!
//! Memory is bounded by `n`: an item is handed to a worker only while fewer than `n` are
//! fetching or waiting to be consumed, so a slow first item stalls the pipeline rather
//! than letting results pile up behind it. Work items are pulled from the input iterator
//! on the consumer's thread, lazily, so the input need not be `Send` (it may hold a
//! [`Previous`](crate::repo::index::Previous) cursor or a listing's continuation token).
//! Dropping the consumer closes the work channel: each worker finishes the fetch it is
//! in and exits.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

type Done<R> = (u64, std::thread::Result<R>);

/// Results of `fetch` over `items`, in input order, at most `n` in flight or buffered.
pub struct Prefetch<I: Iterator, R> {
    items: I,
    work: Option<crossbeam_channel::Sender<(u64, I::Item)>>,
    done: crossbeam_channel::Receiver<Done<R>>,
    /// Results that arrived before their turn.
    ready: BTreeMap<u64, std::thread::Result<R>>,
    /// Sequence number of the next item handed out, and of the next result yielded.
    sent: u64,
    next: u64,
    n: u64,
    exhausted: bool,
}

/// Runs `fetch` over `items` on `n` worker threads (at least one).
///
/// An error is just a result: with `R = Result<T, E>`, a failed item fails only itself.
/// A panicking fetch is re-raised in the consumer when its turn comes, as if the
/// consumer had called it.
pub fn prefetch<I, T, R, F>(items: I, n: usize, fetch: F) -> Prefetch<I, R>
where
    I: Iterator<Item = T>,
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let n = n.max(1);
    // Unbounded channels: the in-flight bound is kept by the consumer, which never has
    // more than `n` items out, so neither channel holds more than `n`.
    let (work_tx, work_rx) = crossbeam_channel::unbounded::<(u64, T)>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done<R>>();
    let fetch = Arc::new(fetch);
    for _ in 0..n {
        let work_rx = work_rx.clone();
        let done_tx = done_tx.clone();
        let fetch = fetch.clone();
        std::thread::spawn(move || {
            for (seq, item) in work_rx {
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| fetch(item)));
                if done_tx.send((seq, r)).is_err() {
                    return; // the consumer is gone
                }
            }
        });
    }
    Prefetch {
        items,
        work: Some(work_tx),
        done: done_rx,
        ready: BTreeMap::new(),
        sent: 0,
        next: 0,
        n: n as u64,
        exhausted: false,
    }
}

impl<I: Iterator, R> Iterator for Prefetch<I, R>
where
    I::Item: Send + 'static,
{
    type Item = R;

    fn next(&mut self) -> Option<R> {
        // Keep up to `n` items out: fetching, or fetched and waiting for their turn.
        while !self.exhausted && self.sent - self.next < self.n {
            match self.items.next() {
                Some(item) => {
                    let work = self.work.as_ref().expect("open until exhausted");
                    if work.send((self.sent, item)).is_err() {
                        // Every worker is gone: only possible if spawning failed them.
                        self.exhausted = true;
                        break;
                    }
                    self.sent += 1;
                }
                None => {
                    self.exhausted = true;
                    self.work = None; // lets idle workers exit
                }
            }
        }
        if self.next == self.sent {
            return None;
        }
        let result = loop {
            if let Some(r) = self.ready.remove(&self.next) {
                break r;
            }
            match self.done.recv() {
                Ok((seq, r)) => {
                    self.ready.insert(seq, r);
                }
                // All workers exited with this item unanswered; cannot happen while we
                // hold the work sender, as workers answer every item they take.
                Err(_) => return None,
            }
        };
        self.next += 1;
        match result {
            Ok(r) => Some(r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A cheap deterministic pseudo-random delay per item.
    fn delay(i: u64) -> Duration {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59;
        Duration::from_millis(x)
    }

    #[test]
    fn results_come_in_input_order_despite_random_delays() {
        let out: Vec<u64> = prefetch(0..200u64, 8, |i| {
            std::thread::sleep(delay(i));
            i * 2
        })
        .collect();
        assert_eq!(out, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn at_most_n_items_are_in_flight_or_buffered() {
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        // Items pulled but not yet consumed: counts buffering, not only fetching.
        let outstanding = Arc::new(AtomicUsize::new(0));
        let peak_outstanding = Arc::new(AtomicUsize::new(0));
        let (l, p) = (live.clone(), peak.clone());
        let o = outstanding.clone();
        let po = peak_outstanding.clone();
        let items = (0..100u64).inspect(move |_| {
            let now = o.fetch_add(1, Ordering::SeqCst) + 1;
            po.fetch_max(now, Ordering::SeqCst);
        });
        let it = prefetch(items, 4, move |i| {
            let now = l.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(delay(i) / 4);
            l.fetch_sub(1, Ordering::SeqCst);
            i
        });
        let mut n = 0;
        for (k, i) in it.enumerate() {
            assert_eq!(i, k as u64);
            outstanding.fetch_sub(1, Ordering::SeqCst);
            // A slow consumer: results must not pile up meanwhile.
            std::thread::sleep(Duration::from_millis(1));
            n += 1;
        }
        assert_eq!(n, 100);
        assert!(peak.load(Ordering::SeqCst) <= 4, "{peak:?}");
        assert!(
            peak.load(Ordering::SeqCst) >= 2,
            "ran concurrently: {peak:?}"
        );
        assert!(
            peak_outstanding.load(Ordering::SeqCst) <= 4,
            "{peak_outstanding:?}"
        );
    }

    #[test]
    fn an_error_fails_only_its_item() {
        let out: Vec<Result<u64, String>> = prefetch(0..20u64, 3, |i| {
            if i == 7 {
                Err(format!("GET {i}: 503"))
            } else {
                Ok(i)
            }
        })
        .collect();
        assert_eq!(out.len(), 20);
        assert_eq!(out[7], Err("GET 7: 503".to_string()));
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, r)| i == 7 || r == &Ok(i as u64))
        );
    }

    #[test]
    fn dropping_the_consumer_stops_the_workers() {
        struct Alive(Arc<AtomicUsize>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        // Each worker thread that fetched holds an `Alive` in a thread-local, dropped when
        // the thread exits: `workers` counts live worker threads.
        let workers = Arc::new(AtomicUsize::new(0));
        let w = workers.clone();
        thread_local! {
            static GUARD: std::cell::RefCell<Option<Alive>> = const { std::cell::RefCell::new(None) };
        }
        let mut it = prefetch(0..u64::MAX, 4, move |i| {
            GUARD.with(|g| {
                if g.borrow().is_none() {
                    w.fetch_add(1, Ordering::SeqCst);
                    *g.borrow_mut() = Some(Alive(w.clone()));
                }
            });
            s.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            i
        });
        assert_eq!(it.next(), Some(0));
        assert_eq!(it.next(), Some(1));
        drop(it);
        // Workers finish the fetch they are in, then exit (their thread-locals drop).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while workers.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(workers.load(Ordering::SeqCst), 0, "workers still running");
        let after = started.load(Ordering::SeqCst);
        // At most n + 2 were ever started (2 consumed, ≤ n more in flight), and no more since.
        assert!(after <= 6, "{after}");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(started.load(Ordering::SeqCst), after);
    }

    #[test]
    #[should_panic(expected = "fetch bug")]
    fn a_panicking_fetch_panics_the_consumer() {
        let _: Vec<u64> = prefetch(0..3u64, 2, |i| {
            if i == 1 {
                panic!("fetch bug");
            }
            i
        })
        .collect();
    }
}
