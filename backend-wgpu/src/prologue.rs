//! WGSL generation for reductions (`shaders/reduce.wgsl`): the value
//! folded at each element is a program from `fused.rs` over the kernel's
//! operands there, the identity of one operand for [`Op::Reduce`] and the
//! prologue for [`Op::ReducePrologue`].
//!
//! [`Op::Reduce`]: tensorgraph_core::Op::Reduce
//! [`Op::ReducePrologue`]: tensorgraph_core::Op::ReducePrologue

use std::fmt::Write as _;
use std::sync::Arc;

use tensorgraph_core::{DType, FusedExpr, Instr, TensorType};

use crate::fused::{Access, FusedProgram};
use crate::shaders::wgsl_type;

/// The program of a plain reduction of one `dtype` operand: the operand
/// itself, read at strides.
pub fn identity(dtype: DType) -> Result<FusedProgram, String> {
    let expr = Arc::new(FusedExpr {
        instrs: vec![Instr::Input(0)],
        dtypes: vec![dtype],
    });
    // Any shape of two or more elements gives the strided (walked) read.
    let ty = TensorType::new(dtype, vec![2]);
    FusedProgram::new(&expr, std::slice::from_ref(&ty), &ty)
}

/// Whether operand access `a` walks strides (rather than one element, or
/// no binding at all).
pub fn walked(a: Access) -> bool {
    matches!(a, Access::Full | Access::Strided)
}

/// The values of `reduce.wgsl`'s generated placeholders for `program`
/// (the others, T, WG, COMBINE and FINISH, are the key's own).
pub(crate) fn template_args(program: &FusedProgram) -> Result<Vec<(&'static str, String)>, String> {
    let mut bindings = String::new();
    let mut fields = String::new();
    let mut kept_init = String::new();
    let mut kept_walk = String::new();
    let mut red_init = String::new();
    let mut red_walk = String::new();
    let mut call = Vec::new();
    let mut slot = 0;
    for (k, (&d, &a)) in program
        .operand_dtypes()
        .iter()
        .zip(program.access())
        .enumerate()
    {
        if a == Access::Unused {
            continue;
        }
        let _ = writeln!(
            bindings,
            "@group(0) @binding({slot}) var<storage, read> x{k}: array<{}>;",
            wgsl_type(d)
        );
        slot += 1;
        if walked(a) {
            let _ = writeln!(fields, "    kept{k}: array<vec4<u32>, 2>,");
            let _ = writeln!(fields, "    red{k}: array<vec4<u32>, 2>,");
            let _ = writeln!(kept_init, "        var base{k} = 0u;");
            let _ = writeln!(
                kept_walk,
                "            base{k} = base{k} + c * p.kept{k}[k / 4u][k % 4u];"
            );
            let _ = writeln!(red_init, "            var off{k} = base{k};");
            let _ = writeln!(
                red_walk,
                "                off{k} = off{k} + c * p.red{k}[k / 4u][k % 4u];"
            );
            call.push(format!("x{k}[off{k}]"));
        } else {
            call.push(format!("x{k}[0]"));
        }
    }
    let out = wgsl_type(program.out());
    let _ = writeln!(
        bindings,
        "@group(0) @binding({slot}) var<storage, read_write> y: array<{out}>;"
    );
    let (ops, eval) = program.eval_fn()?;
    Ok(vec![
        ("BINDINGS", bindings),
        ("PARAMS_BINDING", (slot + 1).to_string()),
        ("FIELDS", fields),
        ("OPS", ops),
        ("EVAL", eval),
        ("KEPT_INIT", kept_init),
        ("KEPT_WALK", kept_walk),
        ("RED_INIT", red_init),
        ("RED_WALK", red_walk),
        ("VALUE", format!("eval({})", call.join(", "))),
    ])
}
