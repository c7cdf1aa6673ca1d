//! The threads of one decode step: every thread of the rayon pool runs the whole step, taking
//! its share of each op and meeting the others at a spin barrier between ops. One wake-up per
//! step replaces a parallel dispatch per op (hundreds per token), which is what a one-token step
//! of a small model otherwise spends most of its time on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A reusable barrier for a fixed number of threads that spins (then yields) instead of
/// sleeping: the waits between the ops of a step last microseconds.
pub(crate) struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Set when a thread of the team panicked: the others stop waiting for it.
    poisoned: AtomicBool,
}

impl SpinBarrier {
    pub(crate) fn new(threads: usize) -> SpinBarrier {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Returns once all `threads` have called it (for this round).
    pub(crate) fn wait(&self) {
        if self.threads <= 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
                panic!("another thread of the decode step panicked");
            }
            if spins < 1 << 14 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                // Another thread is descheduled (or busy elsewhere): stop burning its core.
                std::thread::yield_now();
            }
        }
    }
}

/// One thread's place in the team.
#[derive(Clone, Copy)]
pub(crate) struct Member<'a> {
    /// This thread's index, `0..count`.
    pub(crate) index: usize,
    /// Threads in the team.
    pub(crate) count: usize,
    barrier: &'a SpinBarrier,
}

impl Member<'_> {
    /// Waits for the whole team.
    pub(crate) fn sync(&self) {
        self.barrier.wait();
    }

    /// This thread's share `start..end` of `n` items (contiguous, sizes differing by at most 1).
    pub(crate) fn share(&self, n: usize) -> std::ops::Range<usize> {
        n * self.index / self.count..n * (self.index + 1) / self.count
    }
}

/// Runs `work` on every thread of the current rayon pool at once (at most `max_threads` of
/// them; the rest return at once) and returns when all are done.
pub(crate) fn run_team(max_threads: usize, work: impl Fn(Member<'_>) + Sync) {
    let threads = rayon::current_num_threads().min(max_threads).max(1);
    if threads == 1 {
        let barrier = SpinBarrier::new(1);
        work(Member {
            index: 0,
            count: 1,
            barrier: &barrier,
        });
        return;
    }
    // One team at a time in the pool: two broadcasts queued in different orders on two workers
    // would leave each worker spinning at a barrier the other never reaches. A rayon worker
    // waiting its turn runs other jobs meanwhile (one of them may be the holder's broadcast).
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = loop {
        match TURN.try_lock() {
            Ok(guard) => break guard,
            Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                    std::thread::yield_now();
                }
            }
        }
    };
    let barrier = SpinBarrier::new(threads);
    rayon::broadcast(|ctx| {
        if ctx.index() < threads {
            let member = Member {
                index: ctx.index(),
                count: threads,
                barrier: &barrier,
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(member)));
            if let Err(panic) = run {
                // Release the others from the barrier, then let the panic reach the caller.
                barrier.poisoned.store(true, Ordering::Relaxed);
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// An f32 buffer the team's threads write in disjoint parts between barriers.
#[derive(Clone, Copy)]
pub(crate) struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the pointer is only dereferenced through `part`/`all`, whose callers guarantee that
// no two threads touch the same elements between barriers (see their contracts).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Shares `buf` for the duration of a team run (the caller keeps it borrowed until then).
    pub(crate) fn new(buf: &mut [f32]) -> Shared {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Elements `range`, writable.
    ///
    /// # Safety
    /// No other thread reads or writes any of these elements until the next barrier, and the
    /// buffer outlives the use.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part(&self, range: std::ops::Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// The whole buffer, read-only.
    ///
    /// # Safety
    /// No thread writes it until the next barrier, and the buffer outlives the use.
    pub(crate) unsafe fn all(&self) -> &[f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Teams started from many threads at once (test threads, rayon workers) all finish: one
    /// team runs at a time.
    #[test]
    fn concurrent_teams_do_not_deadlock() {
        use rayon::prelude::*;
        let done = AtomicUsize::new(0);
        let team = || {
            for _ in 0..20 {
                run_team(usize::MAX, |me| {
                    me.sync();
                    me.sync();
                });
            }
            done.fetch_add(1, Ordering::Relaxed);
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(team);
            }
            (0..8).into_par_iter().for_each(|_| team());
        });
        assert_eq!(done.load(Ordering::Relaxed), 12);
    }

    /// Each round every thread writes its share, and after the barrier every thread sees all
    /// of them: the barrier orders the writes before the reads.
    #[test]
    fn rounds_see_every_share() {
        let n = 1000;
        let mut buf = vec![0f32; n];
        let shared = Shared::new(&mut buf);
        let sums = std::sync::Mutex::new(Vec::new());
        run_team(usize::MAX, |me| {
            for round in 1..=50 {
                let range = me.share(n);
                // SAFETY: shares are disjoint; reads happen after the barrier.
                unsafe {
                    shared
                        .part(range)
                        .iter_mut()
                        .for_each(|v| *v = round as f32)
                };
                me.sync();
                let total: f32 = unsafe { shared.all() }.iter().sum();
                sums.lock().unwrap().push((round, total));
                me.sync();
            }
        });
        for (round, total) in sums.into_inner().unwrap() {
            assert_eq!(total, (round * n) as f32);
        }
    }
}
