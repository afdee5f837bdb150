//! In-place execution: an elementwise step (fused, or a lone unary,
//! binary or cast run as a one-op program) writes its result into the
//! buffer of an operand that dies at it (see `Step::in_place`). The buffer changes
//! owner, so nothing is metered: no allocation for the result, no free
//! for the donor.

use std::sync::Arc;

use tensorgraph_core::backend::take_in_place;
use tensorgraph_core::{
    BufferId, Env, Error, FusedExpr, Kernel, Meter, Result, Step, TensorType, Value,
};

use crate::CpuBackend;
use crate::element::KResult;
use crate::fused;
use crate::store::Held;

/// Whether the backend writes `kernel`'s result over one of its operands:
/// an elementwise kernel (fused, or a lone unary, binary or cast op, run
/// as a program of one op) with one result of some operand's exact type.
pub(crate) fn supports(kernel: &Kernel) -> bool {
    kernel.elementwise_in_place()
}

impl CpuBackend {
    /// Runs elementwise `step`, planned in place over an operand: takes the
    /// donor's buffer from the run's table, computes into its array and
    /// stores it as the step's result. If the computation fails the
    /// buffer, no longer anyone's, is freed.
    pub(crate) fn run_in_place(&self, step: &Step, env: &Env<'_>, meter: &Meter) -> Result<()> {
        let fail = |message: String| Error::Backend {
            backend: "cpu".to_string(),
            node: step.name.clone(),
            message,
        };
        let (Some(k), Some(expr), [out], [out_ty]) = (
            step.in_place,
            step.kernel.elementwise_program(),
            &step.outputs[..],
            &step.kernel.outputs[..],
        ) else {
            return Err(fail(format!(
                "{} ({} operands, {} results) does not run in place",
                step.kernel.op.name(),
                step.inputs.len(),
                step.outputs.len()
            )));
        };
        // The other operands, read before the donor leaves the table.
        let others = step
            .inputs
            .iter()
            .enumerate()
            .map(|(i, &v)| match i == k {
                true => Ok(None),
                false => self.store.get(env.buffer(v)?, env).map(Some),
            })
            .collect::<Result<Vec<Option<Held<'_>>>>>()?;
        let buffer = take_in_place(step, env)?
            .ok_or_else(|| fail(format!("operand {k} in place but no donor buffer")))?;
        match self.compute_into(&expr, out_ty, &others, buffer, &step.name) {
            Ok(()) => env.set(*out, buffer),
            Err(message) => {
                if let Err(e) = self.store.remove(buffer, meter) {
                    tracing::warn!(target: "tensorgraph", "cpu: freeing in-place buffer of {}: {e}", step.name);
                }
                Err(fail(message))
            }
        }
    }

    /// Computes `expr` over `others` (the donor's slot `None`) into the
    /// value of `buffer`: in its own array when nothing else holds it,
    /// else into a fresh array that replaces it (same type, same metered
    /// bytes). The buffer holds a value again afterwards, even on error.
    pub(crate) fn compute_into(
        &self,
        expr: &FusedExpr,
        out: &TensorType,
        others: &[Option<Held<'_>>],
        buffer: BufferId,
        name: &str,
    ) -> KResult<()> {
        let mut value = self.store.lend(buffer).map_err(|e| e.to_string())?;
        let inputs: Vec<Option<&Value>> = others.iter().map(|h| h.as_deref()).collect();
        let result = match Arc::get_mut(&mut value) {
            Some(target) => fused::fused_into(expr, out, &inputs, target),
            None => {
                tracing::debug!(target: "tensorgraph", "cpu: in-place donor of {name} is shared; computing into a new array");
                let fresh = {
                    let values: Vec<&Value> = inputs.iter().map(|v| v.unwrap_or(&value)).collect();
                    fused::fused(expr, out, &values)
                };
                fresh.map(|fresh| value = Arc::new(fresh))
            }
        };
        self.store
            .restore(buffer, value)
            .map_err(|e| e.to_string())?;
        result
    }
}
