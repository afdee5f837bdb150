//! Persisted values: a plan that keeps some values across runs compiles a
//! second plan in which those values are inputs, and runs it whenever the
//! feeds they depend on are unchanged.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::{Backend, Kernel};
use crate::exec::RunStats;
use crate::passes::Ir;
use crate::passes::dce::eliminate_dead_code;
use crate::plan::{CompileOptions, FeedSlot, Lowered, Plan, Step, ValueId, finish};
use crate::timeline::Recorder;
use crate::{Op, Result, Value};

/// The second plan and the values kept for it.
pub(crate) struct Persist {
    /// How many outputs the user asked for (persisted ones follow them in
    /// the full plan's outputs).
    pub(crate) requested: usize,
    /// The feed name of each persisted value in `cached`.
    names: Vec<String>,
    /// Inputs the persisted values depend on, sorted.
    deps: Vec<String>,
    /// The plan with persisted values as inputs.
    cached: Plan,
    /// The feeds' fingerprint and the persisted values computed from them.
    kept: Mutex<Option<(u64, Arc<Vec<Value>>)>>,
}

/// The names of the inputs among the ancestors of `roots`.
fn ancestor_inputs(steps: &[Step], roots: &[ValueId]) -> Vec<String> {
    let mut needed: HashSet<ValueId> = roots.iter().copied().collect();
    let mut names = Vec::new();
    for step in steps.iter().rev() {
        if step.outputs.iter().any(|v| needed.contains(v)) {
            needed.extend(step.inputs.iter().copied());
            if let Op::Input { name } = &step.kernel.op {
                names.push(name.clone());
            }
        }
    }
    names.sort();
    names
}

/// Compiles the full plan (persisted values as extra outputs) and the
/// cached plan (persisted values as inputs, their producers pruned).
pub(crate) fn compile(
    lowered: Lowered,
    persisted: Vec<ValueId>,
    backends: Vec<Arc<dyn Backend>>,
    options: &CompileOptions,
) -> Result<Plan> {
    let requested = lowered.outputs.len();
    let deps = ancestor_inputs(&lowered.steps, &persisted);
    let names: Vec<String> = persisted
        .iter()
        .map(|v| format!("__persisted_{}", v.0))
        .collect();

    // The cached variant: each persisted value becomes an input step.
    let mut steps = Vec::with_capacity(lowered.steps.len());
    let mut feeds: Vec<FeedSlot> = Vec::new();
    for step in &lowered.steps {
        let kept: Vec<(usize, &ValueId)> = persisted
            .iter()
            .enumerate()
            .filter(|(_, v)| step.outputs.contains(v))
            .collect();
        if kept.is_empty() || kept.len() < step.outputs.len() {
            steps.push(step.clone());
            continue;
        }
        for (i, &v) in kept {
            let ty = lowered.types[v.0].clone();
            feeds.push(FeedSlot {
                name: names[i].clone(),
                value: v,
                ty: ty.clone(),
            });
            steps.push(Step {
                name: names[i].clone(),
                kernel: Kernel {
                    op: Op::Input {
                        name: names[i].clone(),
                    },
                    inputs: Vec::new(),
                    outputs: vec![ty],
                },
                inputs: Vec::new(),
                outputs: vec![v],
                free_after: Vec::new(),
                ..step.clone()
            });
        }
    }
    // Keep only what the requested outputs still need.
    let mut ir = Ir {
        steps,
        types: lowered.types.clone(),
        outputs: lowered.outputs.clone(),
    };
    eliminate_dead_code(&mut ir);
    let pruned = ir.steps;
    feeds.extend(
        lowered
            .feeds
            .iter()
            .filter(|f| pruned.iter().any(|s| s.outputs.contains(&f.value)))
            .cloned(),
    );
    feeds.retain(|f| pruned.iter().any(|s| s.outputs.contains(&f.value)));
    let mut graph_inputs = lowered.graph_inputs.clone();
    graph_inputs.extend(names.iter().cloned());
    let cached = finish(
        Lowered {
            steps: pruned,
            types: lowered.types.clone(),
            outputs: lowered.outputs.clone(),
            feeds,
            graph_inputs,
        },
        backends.clone(),
        options,
    )?;

    let mut full = lowered;
    full.outputs.extend(persisted.iter().copied());
    let mut plan = finish(full, backends, options)?;
    plan.persist = Some(Box::new(Persist {
        requested,
        names,
        deps,
        cached,
        kept: Mutex::new(None),
    }));
    Ok(plan)
}

impl Persist {
    /// A fingerprint of the feeds the persisted values depend on.
    fn fingerprint(&self, feeds: &[(&str, &Value)]) -> u64 {
        let mut h = DefaultHasher::new();
        for name in &self.deps {
            name.hash(&mut h);
            match feeds.iter().find(|(n, _)| n == name).map(|(_, v)| v) {
                None => 0u8.hash(&mut h),
                Some(Value::F32(a)) => {
                    a.shape().hash(&mut h);
                    a.iter().for_each(|x| x.to_bits().hash(&mut h));
                }
                Some(Value::I32(a)) => {
                    a.shape().hash(&mut h);
                    a.iter().for_each(|x| x.hash(&mut h));
                }
            }
        }
        h.finish()
    }

    /// Runs the cached plan when the kept values are fresh, else the full
    /// plan, keeping its persisted values for later runs.
    pub(crate) fn run(
        &self,
        full: &Plan,
        feeds: &[(&str, &Value)],
        recorder: Option<&Recorder>,
        sink: &mut [Value],
    ) -> Result<(Vec<Value>, RunStats)> {
        let fingerprint = self.fingerprint(feeds);
        let fresh = {
            let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            match kept.as_ref() {
                Some((f, values)) if *f == fingerprint => Some(Arc::clone(values)),
                _ => None,
            }
        };
        if let Some(values) = fresh {
            tracing::debug!(target: "tensorgraph", "persisted values reused");
            let mut all: Vec<(&str, &Value)> = feeds.to_vec();
            all.extend(self.names.iter().map(String::as_str).zip(values.iter()));
            return self.cached.run_plain(&all, recorder, sink);
        }
        // Outputs with a slot in `sink` are not returned: the persisted
        // values are the last `out.len() - (requested - sink.len())`.
        let (mut out, stats) = full.run_plain(feeds, recorder, sink)?;
        let persisted = out.split_off(self.requested.saturating_sub(sink.len()));
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((fingerprint, Arc::new(persisted)));
        Ok((out, stats))
    }
}
