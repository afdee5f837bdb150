//! Running a plan: check the feeds, hand each segment to its backend,
//! download the requested outputs, and free everything on the way.

use std::collections::HashMap;

use std::time::Instant;

use crate::backend::{Env, Meter};
use crate::timeline::{EventKind, Recorder, Timeline};
use crate::plan::Plan;
use crate::{Error, Result, Value};

/// What one run measured, per backend (same order as [`Plan::backends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStats {
    /// Most bytes alive at once on each backend.
    pub peak_bytes: Vec<usize>,
    /// Buffers created on each backend.
    pub allocations: Vec<usize>,
}

impl Plan {
    /// Runs the plan on `feeds` (input name and value) and returns the
    /// requested outputs in the order they were requested.
    pub fn run(&self, feeds: &[(&str, Value)]) -> Result<Vec<Value>> {
        self.run_with_stats(feeds).map(|(out, _)| out)
    }

    /// [`Plan::run`], also returning the memory the run really used.
    pub fn run_with_stats(&self, feeds: &[(&str, Value)]) -> Result<(Vec<Value>, RunStats)> {
        self.run_inner(feeds, None)
    }

    /// [`Plan::run`], also returning a timeline of the run: one slice per
    /// step, a mark per free, a slice per download.
    pub fn run_traced(&self, feeds: &[(&str, Value)]) -> Result<(Vec<Value>, Timeline)> {
        let recorder = Recorder::new();
        let (out, _) = self.run_inner(feeds, Some(&recorder))?;
        Ok((out, recorder.finish()))
    }

    fn run_inner(
        &self,
        feeds: &[(&str, Value)],
        recorder: Option<&Recorder>,
    ) -> Result<(Vec<Value>, RunStats)> {
        let bound = self.bind_feeds(feeds)?;
        let env = Env::new(self.types.len(), bound, recorder);
        let meters: Vec<Meter> = self.backends.iter().map(|_| Meter::default()).collect();
        let result = self.execute(&env, &meters);
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

    fn execute(&self, env: &Env<'_>, meters: &[Meter]) -> Result<Vec<Value>> {
        for (device, range) in &self.segments {
            let segment = crate::backend::Segment {
                steps: &self.steps[range.clone()],
                meter: &meters[*device],
            };
            self.backends[*device].execute(&segment, env)?;
        }
        // Download each requested value once, then free it.
        let mut downloaded: HashMap<usize, Value> = HashMap::new();
        for &v in &self.outputs {
            if downloaded.contains_key(&v.0) {
                continue;
            }
            let device = self.device_of(v);
            let backend = &self.backends[device];
            let buffer = env.buffer(v)?;
            let start = Instant::now();
            let value = backend.download(buffer)?;
            if let Some(rec) = env.recorder {
                let track = format!("{}/transfers", backend.device());
                rec.event(EventKind::Transfer, format!("download {v}"), track, Some(start));
            }
            if let Some(b) = env.take(v) {
                backend.free(b, &meters[device])?;
            }
            downloaded.insert(v.0, value);
        }
        let mut out = Vec::with_capacity(self.outputs.len());
        for (i, v) in self.outputs.iter().enumerate() {
            let last = !self.outputs[i + 1..].contains(v);
            let value = if last {
                downloaded.remove(&v.0)
            } else {
                downloaded.get(&v.0).cloned()
            };
            out.push(value.ok_or_else(|| Error::Internal(format!("{v} was not downloaded")))?);
        }
        Ok(out)
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

    fn device_of(&self, v: crate::plan::ValueId) -> usize {
        self.producer[v.0]
            .map_or(0, |s| self.steps[s].device)
    }

    /// Matches feeds to the plan's inputs by name, checking type and shape.
    fn bind_feeds<'a>(&self, feeds: &'a [(&str, Value)]) -> Result<Vec<Option<&'a Value>>> {
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
                bound[slot.value.0] = Some(value);
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
