//! The WGSL sources, one file per op family under `shaders/`, and their
//! `{{name}}` templating: a [`ShaderKey`] names a shader with its template
//! arguments and is what pipelines are cached by.
//!
//! Dtype and op dispatch into WGSL happens here, in one place: each op
//! maps to an expression over the helpers of `shaders/math.wgsl`, which
//! every elementwise shader (fused kernels included) splices in at its
//! `{{HELPERS}}` placeholder.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tensorgraph_core::{BinaryOp, DType, ReduceOp, UnaryOp};

use crate::epilogue::MatMulProgram;
use crate::fused::FusedProgram;
use crate::prologue;

/// The scalar helpers shared by the elementwise shaders (`math.wgsl`).
pub const HELPERS: &str = include_str!("../../shaders/math.wgsl");

/// One WGSL file of `shaders/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shader {
    /// One-operand elementwise ops and dtype conversions.
    Unary,
    /// Two-operand elementwise ops with broadcasting.
    Binary,
    /// Workgroup tree reductions.
    Reduce,
    /// Strided copies: permute, broadcast, slice, concat, split.
    Layout,
    /// Tiled, batched matrix product.
    MatMul,
    /// The frame of generated fused elementwise programs.
    Fused,
}

impl Shader {
    /// Every shader file.
    pub const ALL: [Shader; 6] = [
        Shader::Unary,
        Shader::Binary,
        Shader::Reduce,
        Shader::Layout,
        Shader::MatMul,
        Shader::Fused,
    ];

    /// The file's name, e.g. `matmul.wgsl`.
    pub const fn file(self) -> &'static str {
        match self {
            Shader::Unary => "unary.wgsl",
            Shader::Binary => "binary.wgsl",
            Shader::Reduce => "reduce.wgsl",
            Shader::Layout => "layout.wgsl",
            Shader::MatMul => "matmul.wgsl",
            Shader::Fused => "fused.wgsl",
        }
    }

    /// The template source, before expansion.
    pub const fn source(self) -> &'static str {
        match self {
            Shader::Unary => include_str!("../../shaders/unary.wgsl"),
            Shader::Binary => include_str!("../../shaders/binary.wgsl"),
            Shader::Reduce => include_str!("../../shaders/reduce.wgsl"),
            Shader::Layout => include_str!("../../shaders/layout.wgsl"),
            Shader::MatMul => include_str!("../../shaders/matmul.wgsl"),
            Shader::Fused => include_str!("../../shaders/fused.wgsl"),
        }
    }
}

/// Replaces every `{{name}}` in `source` by its value; an error names any
/// placeholder left over (a missing argument or a typo).
pub fn expand(source: &str, args: &[(&str, &str)]) -> Result<String, String> {
    let mut out = source.to_string();
    for (name, value) in args {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    match out.find("{{") {
        None => Ok(out),
        Some(at) => {
            let rest = &out[at..];
            let end = rest.find("}}").map_or(rest.len().min(32), |e| e + 2);
            Err(format!("unexpanded placeholder `{}`", &rest[..end]))
        }
    }
}

/// A generated program filling the rest of a template.
#[derive(Debug, Clone)]
pub enum Generated {
    /// A fused elementwise program (`fused.wgsl`).
    Fused(Arc<FusedProgram>),
    /// A matmul, plain or with an epilogue (`matmul.wgsl`).
    MatMul(Arc<MatMulProgram>),
    /// The value a reduction folds at each element (`reduce.wgsl`).
    Reduce(Arc<FusedProgram>),
}

/// A shader with its template arguments: one compute pipeline.
///
/// Identity (equality and hashing, hence the pipeline cache) is the file
/// and `args`; a generated program's canonical text is one of its args, so
/// the program itself is only consulted when the source is built.
#[derive(Debug, Clone)]
pub struct ShaderKey {
    /// The file.
    pub shader: Shader,
    /// `(placeholder, value)` pairs.
    pub args: Vec<(&'static str, String)>,
    /// A generated program filling the rest of the template.
    pub program: Option<Generated>,
}

impl PartialEq for ShaderKey {
    fn eq(&self, other: &Self) -> bool {
        self.shader == other.shader && self.args == other.args
    }
}

impl Eq for ShaderKey {}

impl Hash for ShaderKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.shader.hash(state);
        self.args.hash(state);
    }
}

impl ShaderKey {
    fn new(shader: Shader, args: &[(&'static str, &str)]) -> Self {
        ShaderKey {
            shader,
            args: args.iter().map(|&(k, v)| (k, v.to_string())).collect(),
            program: None,
        }
    }

    /// The key of a generated `program`, identified by its canonical `key`.
    pub fn generated(shader: Shader, key: String, program: Generated) -> Self {
        ShaderKey {
            shader,
            args: vec![("KEY", key)],
            program: Some(program),
        }
    }

    /// The expanded WGSL.
    pub fn source(&self) -> Result<String, String> {
        let generated = match &self.program {
            Some(Generated::Fused(p)) => p.template_args()?,
            Some(Generated::MatMul(p)) => p.template_args()?,
            Some(Generated::Reduce(p)) => prologue::template_args(p)?,
            None => Vec::new(),
        };
        let mut args: Vec<(&str, &str)> = self.args.iter().map(|(k, v)| (*k, v.as_str())).collect();
        args.extend(generated.iter().map(|(k, v)| (*k, v.as_str())));
        args.push(("HELPERS", HELPERS));
        expand(self.shader.source(), &args).map_err(|e| format!("{}: {e}", self.label()))
    }

    /// A readable label, e.g. `binary.wgsl T=f32 EXPR=a + b`.
    pub fn label(&self) -> String {
        let mut s = self.shader.file().to_string();
        for (k, v) in &self.args {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

/// The WGSL name of an element type.
pub const fn wgsl_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::I32 => "i32",
    }
}

/// The WGSL expression of `op` on `dtype`, over the operand `v`; `None`
/// where the op is undefined (transcendental ops on integers, which the
/// builder already rejects).
pub const fn unary_expr(op: UnaryOp, dtype: DType) -> Option<&'static str> {
    Some(match (op, dtype) {
        (UnaryOp::Neg, DType::F32) => "-v",
        (UnaryOp::Neg, DType::I32) => "0 - v",
        (UnaryOp::Abs, _) => "abs(v)",
        (UnaryOp::Relu, DType::F32) => "relu_f32(v)",
        (UnaryOp::Relu, DType::I32) => "max(v, 0)",
        (UnaryOp::Exp, DType::F32) => "exp(v)",
        (UnaryOp::Log, DType::F32) => "log(v)",
        (UnaryOp::Sqrt, DType::F32) => "sqrt(v)",
        (UnaryOp::Tanh, DType::F32) => "tanh_safe(v)",
        (UnaryOp::Sigmoid, DType::F32) => "sigmoid(v)",
        (UnaryOp::Sin, DType::F32) => "sin(v)",
        (UnaryOp::Cos, DType::F32) => "cos(v)",
        (
            UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Sqrt
            | UnaryOp::Tanh
            | UnaryOp::Sigmoid
            | UnaryOp::Sin
            | UnaryOp::Cos,
            DType::I32,
        ) => return None,
    })
}

/// The unary kernel for `op` on `dtype`; `None` where the op is undefined.
pub fn unary(op: UnaryOp, dtype: DType) -> Option<ShaderKey> {
    let expr = unary_expr(op, dtype)?;
    let t = wgsl_type(dtype);
    Some(ShaderKey::new(
        Shader::Unary,
        &[("SRC", t), ("DST", t), ("EXPR", expr)],
    ))
}

/// The WGSL expression of `op` on `dtype`, over the operands `a` and `b`.
pub const fn binary_expr(op: BinaryOp, dtype: DType) -> &'static str {
    match (op, dtype) {
        (BinaryOp::Add, _) => "a + b",
        (BinaryOp::Sub, _) => "a - b",
        (BinaryOp::Mul, _) => "a * b",
        (BinaryOp::Div, DType::F32) => "a / b",
        (BinaryOp::Div, DType::I32) => "div_i32(a, b)",
        (BinaryOp::Max, DType::F32) => "max_f32(a, b)",
        (BinaryOp::Max, DType::I32) => "max(a, b)",
        (BinaryOp::Min, DType::F32) => "min_f32(a, b)",
        (BinaryOp::Min, DType::I32) => "min(a, b)",
        (BinaryOp::Pow, DType::F32) => "pow_f32(a, b)",
        (BinaryOp::Pow, DType::I32) => "pow_i32(a, b)",
    }
}

/// The binary kernel for `op` on `dtype`.
pub fn binary(op: BinaryOp, dtype: DType) -> ShaderKey {
    let expr = binary_expr(op, dtype);
    ShaderKey::new(Shader::Binary, &[("T", wgsl_type(dtype)), ("EXPR", expr)])
}

/// The WGSL expression converting `v` from `from` to `to`.
pub const fn cast_expr(from: DType, to: DType) -> &'static str {
    match (from, to) {
        (DType::F32, DType::I32) => "f32_to_i32(v)",
        (DType::I32, DType::F32) => "f32(v)",
        (DType::F32, DType::F32) | (DType::I32, DType::I32) => "v",
    }
}

/// The conversion kernel from `from` to `to`: the unary frame with two
/// element types.
pub fn cast(from: DType, to: DType) -> ShaderKey {
    let expr = cast_expr(from, to);
    ShaderKey::new(
        Shader::Unary,
        &[
            ("SRC", wgsl_type(from)),
            ("DST", wgsl_type(to)),
            ("EXPR", expr),
        ],
    )
}

/// The reduction kernel for `op` with `wg` threads a group, folding the
/// value `program` computes at each element (its result type is the
/// reduction's).
pub fn reduce(op: ReduceOp, program: FusedProgram, wg: u32) -> ShaderKey {
    let dtype = program.out();
    let t = wgsl_type(dtype);
    let combine = match op {
        ReduceOp::Sum | ReduceOp::Mean => format!("add_{t}"),
        ReduceOp::Max => format!("max_{t}"),
        ReduceOp::Min => format!("min_{t}"),
    };
    let finish = match (op, dtype) {
        (ReduceOp::Mean, DType::F32) => "acc / f32(p.n_red)",
        (ReduceOp::Mean, DType::I32) => "mean_i32(acc, p.n_red)",
        (ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min, _) => "acc",
    };
    let mut key = ShaderKey::new(
        Shader::Reduce,
        &[
            ("T", t),
            ("WG", &wg.to_string()),
            ("COMBINE", &combine),
            ("FINISH", finish),
            ("KEY", program.key_text()),
        ],
    );
    key.program = Some(Generated::Reduce(Arc::new(program)));
    key
}

/// The bits of the identity of `op`'s fold on `dtype`.
pub fn reduce_identity(op: ReduceOp, dtype: DType) -> u32 {
    match (op, dtype) {
        (ReduceOp::Sum | ReduceOp::Mean, DType::F32) => 0.0f32.to_bits(),
        (ReduceOp::Sum | ReduceOp::Mean, DType::I32) => 0,
        (ReduceOp::Max, DType::F32) => f32::NEG_INFINITY.to_bits(),
        (ReduceOp::Max, DType::I32) => i32::MIN as u32,
        (ReduceOp::Min, DType::F32) => f32::INFINITY.to_bits(),
        (ReduceOp::Min, DType::I32) => i32::MAX as u32,
    }
}

/// The strided-copy kernel on `dtype`.
pub fn layout(dtype: DType) -> ShaderKey {
    ShaderKey::new(Shader::Layout, &[("T", wgsl_type(dtype))])
}

/// The plain matmul kernel on `dtype`.
pub fn matmul(dtype: DType) -> ShaderKey {
    MatMulProgram::plain(dtype).shader_key()
}

/// Workgroup sizes the reduction is built with: small for short
/// reductions, so threads are not left idle.
pub const REDUCE_WGS: [u32; 2] = [64, 256];

/// Every pipeline variant the backend can build, for validation tests.
pub fn all_variants() -> Vec<ShaderKey> {
    let dtypes = [DType::F32, DType::I32];
    let mut out = Vec::new();
    for &d in &dtypes {
        out.extend(UnaryOp::ALL.iter().filter_map(|&u| unary(u, d)));
        out.extend(BinaryOp::ALL.iter().map(|&b| binary(b, d)));
        for &to in &dtypes {
            out.push(cast(d, to));
        }
        for &r in &ReduceOp::ALL {
            for &wg in &REDUCE_WGS {
                out.extend(prologue::identity(d).ok().map(|p| reduce(r, p, wg)));
            }
        }
        out.push(layout(d));
        out.push(matmul(d));
        out.push(MatMulProgram::plain(d).with_views(false).shader_key());
    }
    out.extend(fused_samples());
    out.extend(lone_in_place());
    out
}

/// Every lone unary, binary and cast op the GPU runs in place, as the
/// one-op program it runs (`Kernel::elementwise_program`): in the flat
/// form over operand 0, and for binary ops also in the strided form over
/// operand 1 beside a broadcast operand 0.
fn lone_in_place() -> Vec<ShaderKey> {
    use tensorgraph_core::{Kernel, Op, TensorType};
    let mut keys = Vec::new();
    for d in [DType::F32, DType::I32] {
        let full = TensorType::new(d, vec![4, 8]);
        let row = TensorType::new(d, vec![8]);
        let mut cases: Vec<(Op, Vec<TensorType>, usize)> = Vec::new();
        for &u in &UnaryOp::ALL {
            cases.push((Op::Unary(u), vec![full.clone()], 0));
        }
        for &b in &BinaryOp::ALL {
            cases.push((Op::Binary(b), vec![full.clone(), full.clone()], 0));
            cases.push((Op::Binary(b), vec![row.clone(), full.clone()], 1));
        }
        cases.push((Op::Cast(d), vec![full.clone()], 0));
        for (op, inputs, k) in cases {
            let kernel = Kernel {
                op,
                inputs,
                outputs: vec![full.clone()],
            };
            let Some(expr) = kernel.elementwise_program() else {
                continue;
            };
            // Ops the GPU does not define for `d` (exp of i32) are refused
            // by `supports` and never run.
            if let Ok(p) = FusedProgram::new(&expr, &kernel.inputs, &full) {
                keys.extend(p.in_place(k).ok().map(FusedProgram::shader_key));
            }
        }
    }
    keys
}

/// Two small fused programs, `exp(x) * y + 1` over operands of the
/// output's shape (the flat form) and over broadcast ones (the strided
/// form), each also in place into an operand of the output's type, as a
/// reduction's prologue and as a matmul's epilogue: representatives of the
/// generated kernels among [`all_variants`].
fn fused_samples() -> Vec<ShaderKey> {
    use tensorgraph_core::{FusedExpr, Instr, Scalar, TensorType};
    let expr = Arc::new(FusedExpr {
        instrs: vec![
            Instr::Input(0),
            Instr::Unary(UnaryOp::Exp, 0),
            Instr::Input(1),
            Instr::Binary(BinaryOp::Mul, 1, 2),
            Instr::Scalar(Scalar::F32(1.0)),
            Instr::Binary(BinaryOp::Add, 3, 4),
        ],
        dtypes: vec![DType::F32; 6],
    });
    let t = |dims: &[usize]| TensorType::new(DType::F32, dims.to_vec());
    let out = t(&[4, 8]);
    let layouts = [
        [out.clone(), out.clone()],
        [t(&[4, 1]), t(&[8])],
        [t(&[4, 1]), out.clone()],
    ];
    let mut keys = Vec::new();
    for ins in layouts {
        let Ok(p) = FusedProgram::new(&expr, &ins, &out) else {
            continue;
        };
        if let Some(k) = ins.iter().rposition(|ty| *ty == out) {
            keys.extend(p.clone().in_place(k).ok().map(FusedProgram::shader_key));
        }
        keys.push(p.shader_key());
        // The same program as a sum's prologue, and as the epilogue of a
        // [4, 3] x [3, 8] product (operand 0 the product, 1 the extra).
        if let Ok(p) = FusedProgram::new(&expr, &ins, &out) {
            keys.push(reduce(ReduceOp::Sum, p, REDUCE_WGS[0]));
        }
        let mm = [t(&[4, 3]), t(&[3, 8]), ins[1].clone()];
        if let Ok(p) = MatMulProgram::epilogue(&expr, &mm, &out) {
            keys.push(p.clone().with_views(false).shader_key());
            keys.push(p.shader_key());
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_replaces_and_reports_leftovers() {
        assert_eq!(
            expand("x {{A}} {{A}}", &[("A", "1")]),
            Ok("x 1 1".to_string())
        );
        let err = expand("x {{A}} {{B}}", &[("A", "1")]).expect_err("B is missing");
        assert!(err.contains("{{B}}"), "{err}");
    }

    #[test]
    fn every_variant_expands_fully() {
        let variants = all_variants();
        assert!(variants.len() > 40);
        for key in variants {
            let src = key.source().expect("expands");
            assert!(
                !src.contains("{{") && !src.contains("}}"),
                "{}",
                key.label()
            );
        }
    }
}
