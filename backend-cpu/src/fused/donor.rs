//! In-place evaluation: the fused kernel writing its result over the
//! array of one of its operands.

use tensorgraph_core::{FusedExpr, TensorType, Value};

use super::{fused, with_program};
use crate::element::KResult;

/// Evaluates `expr` into `target`, the value of its one missing (`None`)
/// operand, which has `out`'s type: each chunk of it is read before the
/// chunk's result is written over it. A target not laid out row-major is
/// replaced by a freshly computed value instead.
pub(crate) fn fused_into(
    expr: &FusedExpr,
    out: &TensorType,
    inputs: &[Option<&Value>],
    target: &mut Value,
) -> KResult<()> {
    if inputs.iter().filter(|v| v.is_none()).count() != 1 {
        return Err("fused in place: not exactly one donor operand".into());
    }
    if target.dtype() != out.dtype || target.shape() != out.shape {
        return Err(format!("fused in place: donor {} for {out}", target.ty()));
    }
    let row_major = match &*target {
        Value::F32(a) => a.is_standard_layout(),
        Value::I32(a) => a.is_standard_layout(),
    };
    if !row_major {
        let fresh = {
            let donor = &*target;
            let values: Vec<&Value> = inputs.iter().map(|v| v.unwrap_or(donor)).collect();
            fused(expr, out, &values)?
        };
        *target = fresh;
        return Ok(());
    }
    let no_slice = || "fused in place: donor is not one slice".to_string();
    with_program(expr, out, inputs, |program| match target {
        Value::F32(a) => program.run_into(a.as_slice_mut().ok_or_else(no_slice)?),
        Value::I32(a) => program.run_into(a.as_slice_mut().ok_or_else(no_slice)?),
    })
}
