//! Running a plan: check the feeds, run its tasks — one lane per backend
//! plus threads for custom ops, ready tasks longest-path first, so a CPU
//! branch and a GPU branch overlap — download the requested outputs, and
//! free everything on the way.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use crate::backend::{Env, Meter, Segment, release_after, trace_run};
use crate::plan::{Plan, Step, ValueId};
use crate::schedule::{Task, TaskKind};
use crate::timeline::{EventKind, Recorder, Timeline};
use crate::{Device, Error, Result, TensorType, Value};

/// What one run measured, per backend (same order as [`Plan::backends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStats {
    /// Most bytes alive at once on each backend.
    pub peak_bytes: Vec<usize>,
    /// Buffers created on each backend.
    pub allocations: Vec<usize>,
}

/// Most threads started for custom ops in one run.
const CUSTOM_THREADS: usize = 16;

/// The scheduler's shared state in a concurrent run.
struct Sched {
    ready: Vec<BinaryHeap<(u64, Reverse<usize>)>>,
    pending: Vec<usize>,
    left: usize,
    failed: Option<Error>,
}

impl Plan {
    /// Runs the plan on `feeds` (input name and value) and returns the
    /// requested outputs in the order they were requested.
    pub fn run(&self, feeds: &[(&str, Value)]) -> Result<Vec<Value>> {
        self.run_inner(feeds, None, &mut []).map(|(out, _)| out)
    }

    /// [`Plan::run`], also returning the memory the run really used.
    pub fn run_with_stats(&self, feeds: &[(&str, Value)]) -> Result<(Vec<Value>, RunStats)> {
        self.run_inner(feeds, None, &mut [])
    }

    /// [`Plan::run`], also returning a timeline of the run: one slice per
    /// step, a mark per free, a slice per transfer and download.
    pub fn run_traced(&self, feeds: &[(&str, Value)]) -> Result<(Vec<Value>, Timeline)> {
        let recorder = Recorder::new();
        let (out, _) = self.run_inner(feeds, Some(&recorder), &mut [])?;
        Ok((out, recorder.finish()))
    }

    /// [`Plan::run`], writing the outputs into `outputs`: one slot per
    /// requested output, each of that output's dtype and shape (the
    /// previous run's results, say). Each slot's storage is reused: a GPU
    /// output is copied straight into it; a CPU output's storage is handed
    /// to the CPU backend first, which builds this run's values in it. So
    /// a loop of `run_into` whose outputs are fused kernels' or the GPU's
    /// allocates no fresh output memory (and takes no page faults on it)
    /// once warm; other CPU kernels (matmul, reductions) still build fresh
    /// arrays, moved into the slots. (The CPU backend's storage pool is
    /// shared by every plan on it: a CPU output may be built in another
    /// pooled buffer of its size class, left by an earlier run or another
    /// plan, and moved into the slot, the slot's storage staying pooled.)
    ///
    /// A slot count or type that differs from the outputs', or a bad feed,
    /// is an error before anything runs, and the slots are left as they
    /// were. When the run itself fails, every slot still holds a value of
    /// its output's type, its contents unspecified.
    pub fn run_into(&self, feeds: &[(&str, Value)], outputs: &mut [Value]) -> Result<()> {
        self.check_slots(outputs)?;
        // Bad feeds fail here, before any slot gives up its storage.
        let refs: Vec<(&str, &Value)> = feeds.iter().map(|(n, v)| (*n, v)).collect();
        self.bind_feeds(&refs)?;
        let requested = self.outputs();
        for (i, &v) in requested.iter().enumerate() {
            if !requested[..i].contains(&v) {
                self.backends[self.device_of(v)].recycle(&mut outputs[i]);
            }
        }
        let result = self.run_inner(feeds, None, outputs);
        if result.is_err() {
            for (slot, ty) in outputs.iter_mut().zip(self.output_types()) {
                if slot.ty() != ty {
                    *slot = Value::zeros(&ty);
                }
            }
        }
        result.map(|_| ())
    }

    /// The type of each requested output, in order.
    fn output_types(&self) -> impl Iterator<Item = TensorType> + '_ {
        self.outputs().iter().map(|v| self.types[v.0].clone())
    }

    /// `run_into`'s slots must match the outputs one for one.
    fn check_slots(&self, outputs: &[Value]) -> Result<()> {
        if outputs.len() != self.outputs().len() {
            return Err(Error::OutputCount {
                expected: self.outputs().len(),
                found: outputs.len(),
            });
        }
        for (index, (slot, expected)) in outputs.iter().zip(self.output_types()).enumerate() {
            let found = slot.ty();
            if found != expected {
                let v = self.outputs()[index];
                let node = self.producer[v.0]
                    .map_or_else(|| v.to_string(), |s| self.steps[s].name.clone());
                return Err(Error::OutputMismatch {
                    index,
                    node,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Runs the plan; outputs with a slot in `sink` are written there, the
    /// rest returned in order.
    fn run_inner(
        &self,
        feeds: &[(&str, Value)],
        recorder: Option<&Recorder>,
        sink: &mut [Value],
    ) -> Result<(Vec<Value>, RunStats)> {
        let feeds: Vec<(&str, &Value)> = feeds.iter().map(|(n, v)| (*n, v)).collect();
        match &self.persist {
            Some(persist) => persist.run(self, &feeds, recorder, sink),
            None => self.run_plain(&feeds, recorder, sink),
        }
    }

    /// One run of exactly this plan's steps.
    pub(crate) fn run_plain(
        &self,
        feeds: &[(&str, &Value)],
        recorder: Option<&Recorder>,
        sink: &mut [Value],
    ) -> Result<(Vec<Value>, RunStats)> {
        let bound = self.bind_feeds(feeds)?;
        let meters: Vec<Meter> = self.backends.iter().map(|_| Meter::default()).collect();
        let env = Env::new(self, bound, &meters, recorder);
        let result = self
            .execute(&env, &meters)
            .and_then(|()| self.download(&env, &meters, sink));
        if result.is_err() {
            self.release_all(&env, &meters);
        }
        let outputs = result?;
        let stats = RunStats {
            peak_bytes: meters.iter().map(Meter::peak).collect(),
            allocations: meters.iter().map(Meter::allocations).collect(),
        };
        Ok((outputs, stats))
    }

    fn execute(&self, env: &Env<'_>, meters: &[Meter]) -> Result<()> {
        if self.tasks.len() <= 1 || self.sequential() {
            for (t, task) in self.tasks.iter().enumerate() {
                if env.recorder.is_some() {
                    // Recording: wait for each GPU segment so the timeline
                    // shows when the device really worked.
                    self.run_lane_task(t, env, meters)?;
                } else {
                    self.run_task(task, env, meters)?;
                }
            }
        } else {
            self.run_concurrent(env, meters)?;
        }
        Ok(())
    }

    /// True when nothing could overlap: one backend, no custom ops.
    fn sequential(&self) -> bool {
        self.tasks
            .iter()
            .all(|t| t.kind == TaskKind::Segment && t.device == self.tasks[0].device)
    }

    fn run_task(&self, task: &Task, env: &Env<'_>, meters: &[Meter]) -> Result<()> {
        let steps = &self.steps[task.steps.clone()];
        match task.kind {
            TaskKind::Segment | TaskKind::Custom => {
                let segment = Segment {
                    steps,
                    meter: &meters[task.device],
                };
                self.backends[task.device].execute(&segment, env)
            }
            TaskKind::Transfer => steps
                .iter()
                .try_for_each(|step| self.transfer(step, env, meters)),
        }
    }

    /// Runs a task on its lane. A GPU segment's lane then waits for the
    /// device (other lanes go on), so its completion is known and, when
    /// recording, drawn as a queue slice from submission to completion.
    fn run_lane_task(&self, t: usize, env: &Env<'_>, meters: &[Meter]) -> Result<()> {
        let task = &self.tasks[t];
        let start = Instant::now();
        self.run_task(task, env, meters)?;
        let backend = &self.backends[task.device];
        if task.kind == TaskKind::Segment && backend.device() == Device::Gpu {
            backend.synchronize()?;
            if let Some(rec) = env.recorder {
                let first = &self.steps[task.steps.start].name;
                let last = &self.steps[task.steps.end - 1].name;
                let track = format!("{}/queue", backend.device());
                rec.event(
                    EventKind::Queue,
                    format!("{first}..{last}"),
                    track,
                    Some(start),
                );
            }
        }
        Ok(())
    }

    /// Copies a transfer step's inputs to its device through the host.
    fn transfer(&self, step: &Step, env: &Env<'_>, meters: &[Meter]) -> Result<()> {
        trace_run(step, env);
        let to = &self.backends[step.device];
        for (&from_v, &to_v) in step.inputs.iter().zip(&step.outputs) {
            let from = self.device_of(from_v);
            let id = self.backends[from].transfer_to(
                env.buffer(from_v)?,
                env,
                &**to,
                &meters[step.device],
            )?;
            env.set(to_v, id)?;
        }
        release_after(to.as_ref(), step, env)
    }

    /// Runs tasks on one thread per backend lane plus threads for custom
    /// ops; each lane takes its ready task with the longest remaining path.
    fn run_concurrent(&self, env: &Env<'_>, meters: &[Meter]) -> Result<()> {
        let custom_lane = self.backends.len();
        let lane_of = |t: &Task| match t.kind {
            TaskKind::Custom => custom_lane,
            TaskKind::Segment | TaskKind::Transfer => t.device,
        };
        let mut sched = Sched {
            ready: (0..=custom_lane).map(|_| BinaryHeap::new()).collect(),
            pending: self.tasks.iter().map(|t| t.deps.len()).collect(),
            left: self.tasks.len(),
            failed: None,
        };
        for (i, t) in self.tasks.iter().enumerate() {
            if t.deps.is_empty() {
                sched.ready[lane_of(t)].push((t.priority.to_bits(), Reverse(i)));
            }
        }
        let state = Mutex::new(sched);
        let wake = Condvar::new();
        let worker = |lane: usize| {
            loop {
                let next = {
                    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                    loop {
                        if s.failed.is_some() || s.left == 0 {
                            break None;
                        }
                        if let Some((_, Reverse(t))) = s.ready[lane].pop() {
                            break Some(t);
                        }
                        s = wake.wait(s).unwrap_or_else(PoisonError::into_inner);
                    }
                };
                let Some(t) = next else { return };
                let result = self.run_lane_task(t, env, meters);
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                match result {
                    Err(e) => {
                        s.failed.get_or_insert(e);
                    }
                    Ok(()) => {
                        s.left -= 1;
                        for &d in &self.tasks[t].dependents {
                            s.pending[d] -= 1;
                            if s.pending[d] == 0 {
                                let task = &self.tasks[d];
                                s.ready[lane_of(task)].push((task.priority.to_bits(), Reverse(d)));
                            }
                        }
                    }
                }
                drop(s);
                wake.notify_all();
            }
        };
        let customs = self
            .tasks
            .iter()
            .filter(|t| t.kind == TaskKind::Custom)
            .count()
            .min(CUSTOM_THREADS);
        std::thread::scope(|scope| -> Result<()> {
            let mut lanes: Vec<(usize, String)> = (0..custom_lane)
                .filter(|&l| self.tasks.iter().any(|t| lane_of(t) == l))
                .map(|l| (l, format!("tensorgraph-{}", self.backends[l].device())))
                .collect();
            lanes.extend((0..customs).map(|k| (custom_lane, format!("tensorgraph-custom-{k}"))));
            for (lane, name) in lanes {
                let worker = &worker;
                std::thread::Builder::new()
                    .name(name)
                    .spawn_scoped(scope, move || worker(lane))
                    .map_err(|e| Error::Internal(format!("cannot start a worker thread: {e}")))?;
            }
            Ok(())
        })?;
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        match s.failed.take() {
            Some(e) => Err(e),
            None if s.left > 0 => Err(Error::Internal(format!(
                "{} tasks never became ready",
                s.left
            ))),
            None => Ok(()),
        }
    }

    /// Moves each requested value to the host once, freeing its buffer:
    /// into its slot of `sink` where it has one, else into the returned
    /// list (outputs past `sink`, in order). A value requested twice is
    /// taken once and copied.
    fn download(&self, env: &Env<'_>, meters: &[Meter], sink: &mut [Value]) -> Result<Vec<Value>> {
        let mut rest: Vec<Value> =
            Vec::with_capacity(self.outputs.len().saturating_sub(sink.len()));
        for (i, &v) in self.outputs.iter().enumerate() {
            if let Some(j) = self.outputs[..i].iter().position(|&u| u == v) {
                // Requested again: a copy of the first, into the slot's
                // own storage when it has one.
                if i < sink.len() {
                    let (head, tail) = sink.split_at_mut(i);
                    tail[0].clone_from(&head[j]);
                } else {
                    let first = if j < sink.len() {
                        &sink[j]
                    } else {
                        &rest[j - sink.len()]
                    };
                    rest.push(first.clone());
                }
                continue;
            }
            let device = self.device_of(v);
            let backend = &self.backends[device];
            let start = Instant::now();
            let buffer = env
                .take(v)
                .ok_or_else(|| Error::Internal(format!("{v} has no buffer to download")))?;
            match sink.get_mut(i) {
                Some(slot) => backend.take_into(buffer, &meters[device], slot)?,
                None => rest.push(backend.take(buffer, &meters[device])?),
            }
            if let Some(rec) = env.recorder {
                let track = format!("{}/transfers", backend.device());
                rec.event(
                    EventKind::Transfer,
                    format!("download {v}"),
                    track,
                    Some(start),
                );
            }
        }
        Ok(rest)
    }

    /// After a failed run, frees whatever is still alive.
    fn release_all(&self, env: &Env<'_>, meters: &[Meter]) {
        for v in env.remaining() {
            if let Some(b) = env.take(v) {
                let device = self.device_of(v);
                // Best effort: the run's error is what the caller sees.
                let _ = self.backends[device].free(b, &meters[device]);
            }
        }
    }

    pub(crate) fn device_of(&self, v: ValueId) -> usize {
        self.value_device[v.0]
    }

    /// Matches feeds to the plan's inputs by name, checking type and shape.
    fn bind_feeds<'a>(&self, feeds: &[(&str, &'a Value)]) -> Result<Vec<Option<&'a Value>>> {
        let mut bound: Vec<Option<&'a Value>> = vec![None; self.types.len()];
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for (name, value) in feeds {
            if seen.insert(name, ()).is_some() {
                return Err(Error::DuplicateFeed {
                    name: name.to_string(),
                });
            }
            if !self.graph_inputs.iter().any(|n| n == name) {
                return Err(Error::UnknownFeed {
                    name: name.to_string(),
                    known: self.graph_inputs.join(", "),
                });
            }
            // An input of the graph the plan does not need is accepted and
            // ignored.
            if let Some(slot) = self.feeds.iter().find(|f| f.name == *name) {
                let found = value.ty();
                if found != slot.ty {
                    return Err(Error::FeedMismatch {
                        name: name.to_string(),
                        expected: slot.ty.clone(),
                        found,
                    });
                }
                bound[slot.value.0] = Some(*value);
            }
        }
        if let Some(missing) = self.feeds.iter().find(|f| bound[f.value.0].is_none()) {
            return Err(Error::MissingFeed {
                name: missing.name.clone(),
                expected: missing.ty.clone(),
            });
        }
        Ok(bound)
    }
}
