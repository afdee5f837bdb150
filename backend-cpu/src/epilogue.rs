//! Matrix products with an elementwise epilogue: the product is computed
//! into the output buffer, then the epilogue program runs in place over
//! it, chunk by chunk (the fused kernel with the product as its donor).

use tensorgraph_core::{FusedExpr, TensorType, Value};

use crate::element::{KResult, dispatch};
use crate::fused;
use crate::matmul::MatMul;
use crate::pool::Alloc;

/// `expr` over `[a x b, extra...]`: operand 0 of the program is the
/// product, operand `j >= 1` is `extra[j - 1]`, broadcast to `out`.
pub(crate) fn matmul_epilogue(
    expr: &FusedExpr,
    out: &TensorType,
    inputs: &[&Value],
    alloc: Alloc<'_>,
) -> KResult<Value> {
    let [a, b, extra @ ..] = inputs else {
        return Err(format!(
            "matmul epilogue takes at least 2 operands, got {}",
            inputs.len()
        ));
    };
    let mut product = dispatch(&MatMul { shape: &out.shape }, &[*a, *b], alloc)?
        .pop()
        .ok_or("matmul returned no product")?;
    if product.dtype() == out.dtype {
        // The product is the donor: each chunk is read before the
        // epilogue's result is written over it.
        let operands: Vec<Option<&Value>> = std::iter::once(None)
            .chain(extra.iter().copied().map(Some))
            .collect();
        fused::fused_into(expr, out, &operands, &mut product)?;
        Ok(product)
    } else {
        // The program casts: the result needs a buffer of its own dtype.
        let operands: Vec<&Value> = std::iter::once(&product)
            .chain(extra.iter().copied())
            .collect();
        let result = fused::fused_with(expr, out, &operands, alloc);
        alloc.recycle(product);
        result
    }
}
