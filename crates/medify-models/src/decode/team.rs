//! The threads of one decode step: each runs the whole step, taking its share of each op and
//! meeting the others at a spin barrier between ops. One wake-up per step replaces a parallel
//! dispatch per op (hundreds per token), which is what a one-token step of a small model
//! otherwise spends most of its time on.

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

/// Runs `work` on `min(max_threads, rayon's thread count)` threads at once, the calling thread
/// being member 0, and returns when all are done (a panic in any of them reaches the caller).
///
/// The other members are threads of this module's own, started once and parked between
/// steps. Not rayon's: a rayon worker spinning at a barrier would not run the jobs other users
/// of the pool (burn's ops on another thread) are waiting for, and could deadlock with them.
/// One team runs at a time; a second caller waits for the first.
pub(crate) fn run_team(max_threads: usize, work: impl Fn(Member<'_>) + Sync) {
    let threads = rayon::current_num_threads().min(max_threads).max(1);
    let barrier = SpinBarrier::new(threads);
    if threads == 1 {
        work(Member {
            index: 0,
            count: 1,
            barrier: &barrier,
        });
        return;
    }
    static HELPERS: std::sync::Mutex<Vec<Helper>> = std::sync::Mutex::new(Vec::new());
    let mut helpers = HELPERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while helpers.len() < threads - 1 {
        helpers.push(Helper::start());
    }
    let job: &(dyn Fn(Member<'_>) + Sync) = &work;
    let done = std::sync::Arc::new(Finished::default());
    for (i, helper) in helpers.iter().take(threads - 1).enumerate() {
        // SAFETY: the task's pointers are used only until the helper reports it finished, and
        // this function waits for every helper to finish before it returns or unwinds, so
        // `work` and `barrier` outlive every use.
        let task = Task {
            job: unsafe {
                std::mem::transmute::<
                    &(dyn Fn(Member<'_>) + Sync),
                    &'static (dyn Fn(Member<'_>) + Sync),
                >(job)
            },
            barrier: unsafe { std::mem::transmute::<&SpinBarrier, &'static SpinBarrier>(&barrier) },
            index: i + 1,
            count: threads,
            done: done.clone(),
        };
        if helper.tasks.send(task).is_err() {
            // The helper is gone (it cannot panic: tasks run under catch_unwind); count it
            // done and let the barrier report the missing member.
            done.finish(false);
            barrier.poisoned.store(true, Ordering::Relaxed);
        }
    }
    let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        work(Member {
            index: 0,
            count: threads,
            barrier: &barrier,
        })
    }));
    if own.is_err() {
        barrier.poisoned.store(true, Ordering::Relaxed);
    }
    let helpers_ok = done.wait(threads - 1);
    drop(helpers);
    if let Err(panic) = own {
        std::panic::resume_unwind(panic);
    }
    assert!(helpers_ok, "a thread of the decode step panicked");
}

/// A parked thread that runs team tasks.
struct Helper {
    tasks: std::sync::mpsc::Sender<Task>,
}

impl Helper {
    fn start() -> Helper {
        let (tasks, rx) = std::sync::mpsc::channel::<Task>();
        std::thread::Builder::new()
            .name("medify-decode".into())
            .spawn(move || {
                for task in rx {
                    let member = Member {
                        index: task.index,
                        count: task.count,
                        barrier: task.barrier,
                    };
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        (task.job)(member)
                    }));
                    if run.is_err() {
                        task.barrier.poisoned.store(true, Ordering::Relaxed);
                    }
                    task.done.finish(run.is_ok());
                }
            })
            .expect("starting a decode thread");
        Helper { tasks }
    }
}

/// One helper's share of a team run.
struct Task {
    job: &'static (dyn Fn(Member<'_>) + Sync),
    barrier: &'static SpinBarrier,
    index: usize,
    count: usize,
    done: std::sync::Arc<Finished>,
}

/// Counts helpers that finished their task, and whether all ran to the end.
#[derive(Default)]
struct Finished {
    state: std::sync::Mutex<(usize, bool)>,
    changed: std::sync::Condvar,
}

impl Finished {
    fn finish(&self, ok: bool) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.0 += 1;
        s.1 |= !ok;
        self.changed.notify_all();
    }

    /// Waits for `n` helpers; `true` when none panicked.
    fn wait(&self, n: usize) -> bool {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while s.0 < n {
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        !s.1
    }
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
