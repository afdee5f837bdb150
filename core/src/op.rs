//! The closed set of ops, grouped by family, with each family's shape and
//! dtype rule next to it.
//!
//! Builder arguments (negative axes, `-1` in reshapes) are normalised here,
//! so an `Op` in the graph always holds plain, validated indices.

use std::sync::Arc;

use crate::fused::FusedExpr;
use crate::shape::normalize_axis;
use crate::{Ctx, DType, Device, Error, Result, Shape, TensorType, Value};

/// Elementwise ops of one operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Relu,
    Tanh,
    Sigmoid,
    Sin,
    Cos,
}

impl UnaryOp {
    /// Every unary op, for tests and tables.
    pub const ALL: [UnaryOp; 10] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Relu,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ];

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Relu => "relu",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
        }
    }

    /// Transcendental ops are defined for floats only.
    pub const fn float_only(self) -> bool {
        match self {
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => false,
            UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Sqrt
            | UnaryOp::Tanh
            | UnaryOp::Sigmoid
            | UnaryOp::Sin
            | UnaryOp::Cos => true,
        }
    }
}

/// Elementwise ops of two operands, broadcasting by NumPy rules.
///
/// On `i32`: arithmetic wraps, division truncates toward zero and a division
/// by zero gives 0, `pow` with a negative exponent truncates `1 / x^|e|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ];

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
            BinaryOp::Pow => "pow",
        }
    }
}

/// Reductions over a set of axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
}

impl ReduceOp {
    /// Every reduction.
    pub const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min];

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }
}

/// One axis of a slice: elements `start, start + step, ...`, `len` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SliceRange {
    /// First index taken.
    pub start: usize,
    /// Number of indices taken.
    pub len: usize,
    /// Distance between taken indices (at least 1).
    pub step: usize,
}

/// Ops that move or replicate elements without arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LayoutOp {
    /// Same elements in row-major order, new shape.
    Reshape(Shape),
    /// Output axis `i` is input axis `perm[i]`.
    Permute(Vec<usize>),
    /// NumPy broadcast to a larger shape.
    BroadcastTo(Shape),
    /// A strided window, one range per axis.
    Slice(Vec<SliceRange>),
}

impl LayoutOp {
    /// Lower-case name.
    pub const fn name(&self) -> &'static str {
        match self {
            LayoutOp::Reshape(_) => "reshape",
            LayoutOp::Permute(_) => "permute",
            LayoutOp::BroadcastTo(_) => "broadcast_to",
            LayoutOp::Slice(_) => "slice",
        }
    }
}

/// Every node of a graph is one of these.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A named placeholder fed at run time.
    Input {
        /// The feed name.
        name: String,
    },
    /// A value fixed at build time.
    Constant(Arc<Value>),
    /// Elementwise, one operand.
    Unary(UnaryOp),
    /// Elementwise, two broadcasting operands.
    Binary(BinaryOp),
    /// Matrix product over the last two axes; leading axes are batch axes
    /// and broadcast. Operands have rank >= 2 (1-D operands are promoted
    /// by the builder with reshapes, as NumPy does).
    MatMul,
    /// Reduction over sorted, distinct axes.
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// Axes reduced, sorted ascending.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keep_dims: bool,
    },
    /// Data movement.
    Layout(LayoutOp),
    /// Join inputs along an axis.
    Concat {
        /// The axis.
        axis: usize,
    },
    /// Cut the input along an axis into parts of the given sizes; one
    /// output per part.
    Split {
        /// The axis.
        axis: usize,
        /// Size of each part.
        sizes: Vec<usize>,
    },
    /// Convert elements to another dtype (f32 -> i32 truncates toward zero
    /// and saturates; NaN becomes 0).
    Cast(DType),
    /// A fused elementwise program (built by the fusion pass, never by
    /// users): one kernel, one pass over memory.
    Fused(Arc<FusedExpr>),
    /// A matrix product whose result goes through an elementwise
    /// epilogue (bias add, activation, ...) before it is stored. Operands:
    /// the two matmul operands, then the epilogue's other inputs. In the
    /// program, `Instr::Input(0)` is the product and `Instr::Input(j)` for
    /// `j >= 1` is kernel operand `j + 1`, broadcast to the output shape.
    MatMulEpilogue(Arc<FusedExpr>),
    /// A reduction of an elementwise prologue: the reduced tensor is `expr`
    /// evaluated over the kernel's operands, each broadcast to `shape`.
    ReducePrologue {
        /// The prologue program.
        expr: Arc<FusedExpr>,
        /// The shape of the tensor being reduced.
        shape: Shape,
        /// Which reduction.
        op: ReduceOp,
        /// Axes reduced, sorted ascending.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keep_dims: bool,
    },
    /// A user closure over host arrays; runs on the CPU.
    Custom(CustomOp),
    /// Copies values between devices. Inserted by the planner at device
    /// edges and run by the executor, never by a backend's `execute`.
    Transfer {
        /// Where the values live.
        from: Device,
        /// Where they are needed.
        to: Device,
    },
}

/// The error a custom op's closure returns.
pub type CustomError = Box<dyn std::error::Error + Send + Sync>;

/// The closure of a custom op: host arrays in, host arrays out.
pub type CustomFn = dyn Fn(&[&Value]) -> std::result::Result<Vec<Value>, CustomError> + Send + Sync;

/// A user closure as a node. Two custom ops are equal only if they share
/// one closure.
#[derive(Clone)]
pub struct CustomOp {
    /// The user's name for it.
    pub name: Arc<str>,
    /// The closure.
    pub func: Arc<CustomFn>,
}

impl std::fmt::Debug for CustomOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomOp({})", self.name)
    }
}

impl PartialEq for CustomOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.func, &other.func)
    }
}

impl Op {
    /// The op's name, as used in node names and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Constant(_) => "constant",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::MatMul => "matmul",
            Op::Reduce { op, .. } => op.name(),
            Op::Layout(l) => l.name(),
            Op::Concat { .. } => "concat",
            Op::Split { .. } => "split",
            Op::Cast(_) => "cast",
            Op::Fused(_) => "fused",
            Op::MatMulEpilogue(_) => "matmul_epilogue",
            Op::ReducePrologue { op, .. } => op.name(),
            Op::Custom(_) => "custom",
            Op::Transfer { .. } => "transfer",
        }
    }

    /// Whether the op maps elements one to one (with broadcasting).
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Unary(_) | Op::Binary(_) | Op::Cast(_) | Op::Fused(_)
        )
    }

    /// Whether the op only moves data.
    pub fn is_layout(&self) -> bool {
        matches!(self, Op::Layout(_) | Op::Concat { .. } | Op::Split { .. })
    }

    /// Whether the op brings a value from the host (input or constant).
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Constant(_))
    }

    /// Floating-point operations one run of this op performs, for cost
    /// estimates and throughput figures.
    pub fn flops(&self, inputs: &[TensorType], outputs: &[TensorType]) -> u64 {
        let out = outputs.first().map_or(0, |t| t.shape.numel()) as u64;
        match self {
            Op::MatMul => {
                let k = inputs
                    .first()
                    .and_then(|a| a.shape.dims().last().copied())
                    .unwrap_or(0) as u64;
                2 * out * k
            }
            Op::Reduce { .. } => inputs.first().map_or(0, |t| t.shape.numel()) as u64,
            Op::Unary(_) | Op::Binary(_) => out,
            Op::Fused(e) => out * e.instrs.len() as u64,
            Op::MatMulEpilogue(e) => {
                let k = inputs
                    .first()
                    .and_then(|a| a.shape.dims().last().copied())
                    .unwrap_or(0) as u64;
                2 * out * k + out * e.instrs.len() as u64
            }
            Op::ReducePrologue { expr, shape, .. } => {
                shape.numel() as u64 * (expr.instrs.len() as u64 + 1)
            }
            Op::Input { .. } | Op::Constant(_) | Op::Layout(_) => 0,
            Op::Concat { .. } | Op::Split { .. } | Op::Cast(_) => 0,
            Op::Custom(_) | Op::Transfer { .. } => 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Shape and dtype rules, one function per family. Each takes the user's
// arguments, validates them and returns the normalised op and output types.

/// Unary: same type out; transcendental ops need a float.
pub(crate) fn infer_unary(ctx: &Ctx, op: UnaryOp, x: &TensorType) -> Result<TensorType> {
    if op.float_only() && !x.dtype.is_float() {
        return Err(Error::UnsupportedDType {
            ctx: Box::new(ctx.clone()),
            dtype: x.dtype,
            shape: x.shape.clone(),
            hint: "; cast to f32 first",
        });
    }
    Ok(x.clone())
}

/// Binary: same dtype, broadcast shapes.
pub(crate) fn infer_binary(ctx: &Ctx, a: &TensorType, b: &TensorType) -> Result<TensorType> {
    if a.dtype != b.dtype {
        return Err(Error::DTypeMismatch {
            ctx: Box::new(ctx.clone()),
            lhs: a.dtype,
            lhs_shape: a.shape.clone(),
            rhs: b.dtype,
            rhs_shape: b.shape.clone(),
        });
    }
    let shape = a
        .shape
        .broadcast(&b.shape)
        .ok_or_else(|| Error::Broadcast {
            ctx: Box::new(ctx.clone()),
            shapes: vec![a.shape.clone(), b.shape.clone()],
        })?;
    Ok(TensorType::new(a.dtype, shape))
}

/// MatMul of rank >= 2 operands: `[..batch, m, k] x [..batch, k, n]`.
pub(crate) fn infer_matmul(ctx: &Ctx, a: &TensorType, b: &TensorType) -> Result<TensorType> {
    if a.dtype != b.dtype {
        return Err(Error::DTypeMismatch {
            ctx: Box::new(ctx.clone()),
            lhs: a.dtype,
            lhs_shape: a.shape.clone(),
            rhs: b.dtype,
            rhs_shape: b.shape.clone(),
        });
    }
    let bad = |reason: String| Error::MatMulShape {
        ctx: Box::new(ctx.clone()),
        lhs: a.shape.clone(),
        rhs: b.shape.clone(),
        reason,
    };
    let (ad, bd) = (a.shape.dims(), b.shape.dims());
    if ad.len() < 2 || bd.len() < 2 {
        return Err(bad("operands must have rank >= 1".into()));
    }
    let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
    let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
    if k != k2 {
        return Err(bad(format!("inner dimensions differ ({k} vs {k2})")));
    }
    let batch_a = Shape::from(&ad[..ad.len() - 2]);
    let batch_b = Shape::from(&bd[..bd.len() - 2]);
    let mut dims = batch_a
        .broadcast(&batch_b)
        .ok_or_else(|| {
            bad(format!(
                "batch shapes {batch_a} and {batch_b} do not broadcast"
            ))
        })?
        .0;
    dims.extend([m, n]);
    Ok(TensorType::new(a.dtype, dims))
}

/// Normalise an axis list: negative axes count from the end, no repeats,
/// an empty list means every axis. Returned sorted.
pub(crate) fn normalize_axes(ctx: &Ctx, shape: &Shape, axes: &[isize]) -> Result<Vec<usize>> {
    if axes.is_empty() {
        return Ok((0..shape.rank()).collect());
    }
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = shape.axis(a).ok_or_else(|| Error::Axis {
            ctx: Box::new(ctx.clone()),
            axis: a,
            shape: shape.clone(),
        })?;
        if out.contains(&n) {
            return Err(Error::DuplicateAxis {
                ctx: Box::new(ctx.clone()),
                axis: n,
                shape: shape.clone(),
            });
        }
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// Reduce: normalised axes, and the reduced type.
pub(crate) fn infer_reduce(
    ctx: &Ctx,
    op: ReduceOp,
    x: &TensorType,
    axes: &[isize],
    keep_dims: bool,
) -> Result<(Op, TensorType)> {
    let axes = normalize_axes(ctx, &x.shape, axes)?;
    let empty = axes.iter().any(|&a| x.shape.dims()[a] == 0);
    if empty && matches!(op, ReduceOp::Max | ReduceOp::Min) {
        return Err(Error::EmptyReduction {
            ctx: Box::new(ctx.clone()),
            op: op.name(),
            shape: x.shape.clone(),
        });
    }
    let mut dims = Vec::with_capacity(x.shape.rank());
    for (i, &d) in x.shape.dims().iter().enumerate() {
        if !axes.contains(&i) {
            dims.push(d);
        } else if keep_dims {
            dims.push(1);
        }
    }
    let ty = TensorType::new(x.dtype, dims);
    Ok((
        Op::Reduce {
            op,
            axes,
            keep_dims,
        },
        ty,
    ))
}

/// Reshape with at most one `-1` inferred.
pub(crate) fn infer_reshape(ctx: &Ctx, x: &TensorType, to: &[isize]) -> Result<TensorType> {
    let bad = |reason: String| Error::Reshape {
        ctx: Box::new(ctx.clone()),
        from: x.shape.clone(),
        to: to.to_vec(),
        reason,
    };
    let mut infer = None;
    let mut known = 1usize;
    for (i, &d) in to.iter().enumerate() {
        match d {
            -1 if infer.is_some() => return Err(bad("more than one -1".into())),
            -1 => infer = Some(i),
            d if d < 0 => return Err(bad(format!("negative dimension {d}"))),
            d => {
                known = known
                    .checked_mul(d as usize)
                    .ok_or_else(|| bad("the element count overflows".into()))?;
            }
        }
    }
    let numel = x.shape.numel();
    let mut dims: Vec<usize> = to.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(bad(format!(
                "{numel} elements do not divide into the known dimensions"
            )));
        }
        dims[i] = numel / known;
    } else if known != numel {
        return Err(bad(format!("{numel} elements cannot become {known}")));
    }
    Ok(TensorType::new(x.dtype, dims))
}

/// Permute: `perm` must name every axis once.
pub(crate) fn infer_permute(
    ctx: &Ctx,
    x: &TensorType,
    perm: &[isize],
) -> Result<(Vec<usize>, TensorType)> {
    let bad = || Error::Permutation {
        ctx: Box::new(ctx.clone()),
        perm: perm.to_vec(),
        shape: x.shape.clone(),
    };
    if perm.len() != x.shape.rank() {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(perm.len());
    for &p in perm {
        let n = x.shape.axis(p).ok_or_else(bad)?;
        if out.contains(&n) {
            return Err(bad());
        }
        out.push(n);
    }
    let dims = out.iter().map(|&p| x.shape.dims()[p]).collect::<Vec<_>>();
    Ok((out, TensorType::new(x.dtype, dims)))
}

/// Broadcast to a shape the input broadcasts to.
pub(crate) fn infer_broadcast_to(ctx: &Ctx, x: &TensorType, to: &Shape) -> Result<TensorType> {
    if !x.shape.broadcasts_to(to) {
        return Err(Error::BroadcastTo {
            ctx: Box::new(ctx.clone()),
            from: x.shape.clone(),
            to: to.clone(),
        });
    }
    Ok(TensorType::new(x.dtype, to.clone()))
}

/// Slice one axis: `start..end` by `step`, negative indices from the end,
/// out-of-range bounds clamped (as in NumPy); step must be positive.
pub(crate) fn infer_slice(
    ctx: &Ctx,
    x: &TensorType,
    axis: isize,
    start: isize,
    end: isize,
    step: isize,
) -> Result<(Vec<SliceRange>, TensorType)> {
    let bad = |reason: String| Error::Slice {
        ctx: Box::new(ctx.clone()),
        shape: x.shape.clone(),
        axis,
        reason,
    };
    let ax = x
        .shape
        .axis(axis)
        .ok_or_else(|| bad(format!("axis out of range for rank {}", x.shape.rank())))?;
    if step <= 0 {
        return Err(bad(format!("step must be positive, got {step}")));
    }
    let dim = x.shape.dims()[ax] as isize;
    let clamp = |i: isize| if i < 0 { (i + dim).max(0) } else { i.min(dim) };
    let (s, e) = (clamp(start), clamp(end));
    // (e - s - 1) / step + 1, which cannot overflow for a huge step.
    let len = if e > s { (e - s - 1) / step + 1 } else { 0 };
    let mut ranges: Vec<SliceRange> = x
        .shape
        .dims()
        .iter()
        .map(|&d| SliceRange {
            start: 0,
            len: d,
            step: 1,
        })
        .collect();
    ranges[ax] = SliceRange {
        start: s as usize,
        len: len as usize,
        step: step as usize,
    };
    let mut dims = x.shape.0.clone();
    dims[ax] = len as usize;
    Ok((ranges, TensorType::new(x.dtype, dims)))
}

/// Concat: same dtype and rank, equal dims except on the axis.
pub(crate) fn infer_concat(
    ctx: &Ctx,
    xs: &[TensorType],
    axis: isize,
) -> Result<(usize, TensorType)> {
    let shapes = || xs.iter().map(|t| t.shape.clone()).collect::<Vec<_>>();
    let bad = |reason: String| Error::Concat {
        ctx: Box::new(ctx.clone()),
        shapes: shapes(),
        axis,
        reason,
    };
    let first = xs.first().ok_or_else(|| bad("no inputs".into()))?;
    let ax = normalize_axis(axis, first.shape.rank())
        .ok_or_else(|| bad(format!("axis out of range for rank {}", first.shape.rank())))?;
    let mut dims = first.shape.0.clone();
    for t in &xs[1..] {
        if t.dtype != first.dtype {
            return Err(bad(format!(
                "dtypes differ ({} vs {})",
                first.dtype, t.dtype
            )));
        }
        if t.shape.rank() != first.shape.rank() {
            return Err(bad("ranks differ".into()));
        }
        for (i, (&a, &b)) in first.shape.dims().iter().zip(t.shape.dims()).enumerate() {
            if i != ax && a != b {
                return Err(bad(format!("dimension {i} differs ({a} vs {b})")));
            }
        }
        dims[ax] += t.shape.dims()[ax];
    }
    Ok((ax, TensorType::new(first.dtype, dims)))
}

/// How [`crate::Tensor::split`] cuts an axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitSpec {
    /// This many equal parts; the axis must divide evenly.
    Parts(usize),
    /// Parts of these sizes; they must sum to the axis length.
    Sizes(Vec<usize>),
}

/// Split: sizes that exactly cover the axis.
pub(crate) fn infer_split(
    ctx: &Ctx,
    x: &TensorType,
    axis: isize,
    spec: &SplitSpec,
) -> Result<(Op, Vec<TensorType>)> {
    let bad = |reason: String| Error::Split {
        ctx: Box::new(ctx.clone()),
        shape: x.shape.clone(),
        axis,
        reason,
    };
    let ax = x
        .shape
        .axis(axis)
        .ok_or_else(|| bad(format!("axis out of range for rank {}", x.shape.rank())))?;
    let dim = x.shape.dims()[ax];
    let sizes = match spec {
        SplitSpec::Parts(0) => return Err(bad("zero parts".into())),
        SplitSpec::Parts(n) if !dim.is_multiple_of(*n) => {
            return Err(bad(format!("{dim} does not divide into {n} equal parts")));
        }
        SplitSpec::Parts(n) => vec![dim / n; *n],
        SplitSpec::Sizes(s) if s.is_empty() => return Err(bad("no sizes".into())),
        SplitSpec::Sizes(s) if s.iter().sum::<usize>() != dim => {
            return Err(bad(format!("sizes {s:?} do not sum to {dim}")));
        }
        SplitSpec::Sizes(s) => s.clone(),
    };
    let outs = sizes
        .iter()
        .map(|&s| {
            let mut d = x.shape.0.clone();
            d[ax] = s;
            TensorType::new(x.dtype, d)
        })
        .collect();
    Ok((Op::Split { axis: ax, sizes }, outs))
}
