//! Placement: each step gets a backend — the user's pin, else what the
//! backends support, else (for `Device::Auto` with several backends) the
//! cost model — and transfer steps are inserted at device edges.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::{Backend, Kernel};
use crate::cost::{Calibration, calibration};
use crate::plan::{Step, ValueId};
use crate::{Device, Error, Op, Result, TensorType};

/// Chooses a backend index for every step (steps in topological order).
/// `outputs` are the values the caller gets back: bringing them to the host
/// is part of a step's cost.
pub(crate) fn place(
    steps: &[Step],
    producer: &[usize],
    outputs: &[ValueId],
    backends: &[Arc<dyn Backend>],
    requested: Device,
) -> Result<Vec<usize>> {
    let find = |d: Device| backends.iter().position(|b| b.device() == d);
    let default = match requested {
        Device::Cpu | Device::Gpu => find(requested),
        Device::Auto => find(Device::Gpu).or_else(|| find(Device::Cpu)),
    }
    .ok_or_else(|| Error::DeviceUnavailable {
        device: requested,
        hint: "no backend for it was given".into(),
    })?;
    let costs: Option<Vec<Calibration>> = (requested == Device::Auto && backends.len() > 1)
        .then(|| backends.iter().map(calibration).collect());

    let mut device = vec![usize::MAX; steps.len()];
    for (i, step) in steps.iter().enumerate() {
        if step.kernel.op.is_source() {
            continue; // placed with their first consumer below
        }
        let supported = |d: usize| backends[d].supports(&step.kernel);
        let unsupported = |d: usize, reason: String| Error::Unsupported {
            ctx: Box::new(step.ctx()),
            backend: backends[d].name().to_string(),
            reason,
        };
        let pin = match (&step.kernel.op, step.pin) {
            (Op::Custom(_), _) => Some(Device::Cpu),
            (_, Some(Device::Auto)) | (_, None) => None,
            (_, Some(p)) => Some(p),
        };
        if let Some(p) = pin {
            let d = find(p).ok_or_else(|| Error::DeviceUnavailable {
                device: p,
                hint: format!(
                    "node `{}` ({}) is pinned to {p}, which this machine or build does not offer",
                    step.name,
                    step.kernel.op.name()
                ),
            })?;
            supported(d).map_err(|r| unsupported(d, r))?;
            device[i] = d;
            continue;
        }
        device[i] = match &costs {
            Some(costs) => cheapest(step, &device, producer, steps, outputs, costs, backends)
                .ok_or_else(|| unsupported(default, "no backend supports it".into()))?,
            None => match supported(default) {
                Ok(()) => default,
                Err(reason) => (0..backends.len())
                    .find(|&d| supported(d).is_ok())
                    .ok_or_else(|| unsupported(default, reason))?,
            },
        };
    }
    // Sources live on the host when a host step reads them: the CPU
    // backend holds feeds and constants without a copy, and a transfer
    // from there is the one upload another device needs (placed on that
    // device first, the host's copy would be a download). Otherwise they
    // upload straight to their first consumer's device.
    let host = backends.iter().position(|b| b.device() == Device::Cpu);
    let mut first_consumer: Vec<Option<usize>> = vec![None; steps.len()];
    let mut read_on_host = vec![false; steps.len()];
    for (i, step) in steps.iter().enumerate() {
        for v in &step.inputs {
            let p = producer[v.0];
            if first_consumer[p].is_none() {
                first_consumer[p] = Some(i);
            }
            read_on_host[p] |= Some(device[i]) == host;
        }
    }
    // A source the run returns is read on the host too.
    for v in outputs {
        read_on_host[producer[v.0]] = true;
    }
    for (i, step) in steps.iter().enumerate() {
        if step.kernel.op.is_source() {
            device[i] = match host {
                Some(h) if read_on_host[i] => h,
                _ => first_consumer[i].map_or(default, |c| device[c]),
            };
        }
    }
    Ok(device)
}

/// The supporting backend with the least compute plus transfer time.
fn cheapest(
    step: &Step,
    device: &[usize],
    producer: &[usize],
    steps: &[Step],
    outputs: &[ValueId],
    costs: &[Calibration],
    backends: &[Arc<dyn Backend>],
) -> Option<usize> {
    let kernel = &step.kernel;
    let mut best: Option<(f64, usize)> = None;
    for (d, cost) in costs.iter().enumerate() {
        if backends[d].supports(kernel).is_err() {
            continue;
        }
        let mut t = cost.step_seconds(kernel);
        for (v, ty) in step.outputs.iter().zip(&kernel.outputs) {
            if outputs.contains(v) {
                t += cost.transfer_seconds(ty.bytes());
            }
        }
        for (v, ty) in step.inputs.iter().zip(&kernel.inputs) {
            let p = producer[v.0];
            if steps[p].kernel.op.is_source() {
                continue; // uploaded wherever it is needed
            }
            let from = device[p];
            if from != d {
                t += costs[from].transfer_seconds(ty.bytes()) + cost.transfer_seconds(ty.bytes());
            }
        }
        if best.is_none_or(|(b, _)| t < b) {
            best = Some((t, d));
        }
    }
    best.map(|(_, d)| d)
}

/// Inserts one transfer step before each step that reads values living on
/// another device, batching all values it needs from one device into one
/// transfer; a value is moved to a device at most once. Returns the new
/// steps and value types.
pub(crate) fn insert_transfers(
    steps: Vec<Step>,
    mut types: Vec<TensorType>,
    backends: &[Arc<dyn Backend>],
) -> (Vec<Step>, Vec<TensorType>) {
    let mut home: Vec<usize> = vec![usize::MAX; types.len()];
    for s in &steps {
        for v in &s.outputs {
            home[v.0] = s.device;
        }
    }
    let mut copies: HashMap<(usize, usize), ValueId> = HashMap::new();
    let mut out = Vec::with_capacity(steps.len());
    let mut count = 0usize;
    for mut step in steps {
        let mut needed: Vec<(usize, Vec<ValueId>)> = Vec::new();
        for v in &step.inputs {
            let from = home[v.0];
            if from == step.device || copies.contains_key(&(v.0, step.device)) {
                continue;
            }
            match needed.iter_mut().find(|(f, _)| *f == from) {
                Some((_, vs)) if !vs.contains(v) => vs.push(*v),
                Some(_) => {}
                None => needed.push((from, vec![*v])),
            }
        }
        for (from, vs) in needed {
            let outputs: Vec<ValueId> = vs
                .iter()
                .map(|v| {
                    let id = ValueId(types.len());
                    types.push(types[v.0].clone());
                    home.push(step.device);
                    copies.insert((v.0, step.device), id);
                    id
                })
                .collect();
            let tys: Vec<TensorType> = vs.iter().map(|v| types[v.0].clone()).collect();
            let (src, dst) = (backends[from].device(), backends[step.device].device());
            out.push(Step {
                name: format!("transfer_{count}_{src}_to_{dst}"),
                node: step.node,
                location: step.location,
                kernel: Kernel {
                    op: Op::Transfer { from: src, to: dst },
                    inputs: tys.clone(),
                    outputs: tys,
                },
                inputs: vs,
                outputs,
                free_after: Vec::new(),
                device: step.device,
                pin: None,
                in_place: None,
            });
            count += 1;
        }
        for v in step.inputs.iter_mut() {
            if let Some(c) = copies.get(&(v.0, step.device)) {
                *v = *c;
            }
        }
        out.push(step);
    }
    (out, types)
}
