//! `Tensor`: a handle to one output of one node, and the builder methods
//! and operator overloads that grow the graph from it.
//!
//! Every builder method returns `Result`; the `std::ops` overloads call the
//! same code and panic with the same message on bad input, as ndarray's do.

use std::ops;

use crate::graph::{Port, first};
use crate::op::{self, BinaryOp, LayoutOp, Op, ReduceOp, SplitSpec, UnaryOp};
use crate::{DType, Device, Graph, NodeId, Result, Shape, TensorType};

/// One output of one node of a [`Graph`], with its static type.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub(crate) graph: Graph,
    pub(crate) port: Port,
    pub(crate) ty: TensorType,
}

impl Tensor {
    /// The graph this tensor belongs to.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Which node output this is.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The producing node.
    pub fn node(&self) -> NodeId {
        self.port.node
    }

    /// Dtype and shape.
    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    /// Shape.
    pub fn shape(&self) -> &Shape {
        &self.ty.shape
    }

    /// The producing node's name.
    pub fn name(&self) -> String {
        let g = self.graph.lock();
        g.dag
            .node_weight(self.port.node.0)
            .map_or_else(String::new, |n| n.name.clone())
    }

    /// Renames the producing node (shown in errors, traces and DOT).
    pub fn named(self, name: &str) -> Tensor {
        if let Some(n) = self.graph.lock().dag.node_weight_mut(self.port.node.0) {
            n.name = name.to_string();
        }
        self
    }

    /// Pins the producing node to `device` (`Device::Auto` lifts a pin).
    /// Compiling fails if the device is not available.
    pub fn on(self, device: Device) -> Tensor {
        if let Some(n) = self.graph.lock().dag.node_weight_mut(self.port.node.0) {
            n.pin = Some(device);
        }
        self
    }

    /// Keeps this node's values across runs of a plan: a later run whose
    /// feeds of the node's ancestor inputs are unchanged reuses them
    /// instead of recomputing the node and whatever only it needs.
    pub fn persist(self) -> Tensor {
        if let Some(n) = self.graph.lock().dag.node_weight_mut(self.port.node.0) {
            n.persist = !n.op.is_source();
        }
        self
    }

    #[track_caller]
    fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        self.graph
            .push(op.name(), &[self], |ctx, t| {
                Ok((Op::Unary(op), vec![op::infer_unary(ctx, op, &t[0])?]))
            })
            .map(first)
    }

    #[track_caller]
    fn binary(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        self.graph
            .push(op.name(), &[self, rhs], |ctx, t| {
                Ok((Op::Binary(op), vec![op::infer_binary(ctx, &t[0], &t[1])?]))
            })
            .map(first)
    }

    #[track_caller]
    fn scalar_like(&self, x: f64) -> Tensor {
        // A rank-0 constant of this tensor's dtype, so `&t * 2.0` works on
        // either dtype.
        match self.dtype() {
            DType::F32 => self.graph.constant(x as f32),
            DType::I32 => self.graph.constant(x as i32),
        }
    }

    /// Elementwise `self + rhs`, broadcasting.
    #[track_caller]
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, rhs)
    }

    /// Elementwise `self - rhs`, broadcasting.
    #[track_caller]
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, rhs)
    }

    /// Elementwise `self * rhs`, broadcasting.
    #[track_caller]
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, rhs)
    }

    /// Elementwise `self / rhs`, broadcasting.
    #[track_caller]
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, rhs)
    }

    /// Elementwise maximum, broadcasting (NaN propagates on `f32`).
    #[track_caller]
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Max, rhs)
    }

    /// Elementwise minimum, broadcasting (NaN propagates on `f32`).
    #[track_caller]
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Min, rhs)
    }

    /// Elementwise `self ^ rhs`, broadcasting.
    #[track_caller]
    pub fn pow(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Pow, rhs)
    }

    /// Elementwise `self ^ e` for a scalar exponent.
    #[track_caller]
    pub fn powf(&self, e: f32) -> Result<Tensor> {
        let e = self.scalar_like(f64::from(e));
        self.pow(&e)
    }

    /// Elementwise negation.
    #[track_caller]
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }

    /// Elementwise absolute value.
    #[track_caller]
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }

    /// Elementwise `e^x` (floats only).
    #[track_caller]
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }

    /// Elementwise natural logarithm (floats only).
    #[track_caller]
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }

    /// Elementwise square root (floats only).
    #[track_caller]
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }

    /// Elementwise `max(x, 0)`.
    #[track_caller]
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }

    /// Elementwise hyperbolic tangent (floats only).
    #[track_caller]
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }

    /// Elementwise logistic sigmoid (floats only).
    #[track_caller]
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }

    /// Elementwise sine (floats only).
    #[track_caller]
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }

    /// Elementwise cosine (floats only).
    #[track_caller]
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }

    /// One unary op chosen at run time (tests and generators use this).
    #[track_caller]
    pub fn apply_unary(&self, op: UnaryOp) -> Result<Tensor> {
        self.unary(op)
    }

    /// One binary op chosen at run time.
    #[track_caller]
    pub fn apply_binary(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        self.binary(op, rhs)
    }

    /// Matrix product with NumPy's `matmul` semantics: the last two axes
    /// multiply, leading axes are batch axes and broadcast; a 1-D left
    /// operand gets a 1 prepended and a 1-D right operand a 1 appended,
    /// removed again from the result.
    #[track_caller]
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (ra, rb) = (self.shape().rank(), rhs.shape().rank());
        if ra == 0 || rb == 0 {
            return self
                .graph
                .push("matmul", &[self, rhs], |ctx, t| {
                    Err(crate::Error::MatMulShape {
                        ctx: Box::new(ctx.clone()),
                        lhs: t[0].shape.clone(),
                        rhs: t[1].shape.clone(),
                        reason: "operands must have rank >= 1".into(),
                    })
                })
                .map(first);
        }
        let a = if ra == 1 {
            self.reshape(&[1, -1])?
        } else {
            self.clone()
        };
        let b = if rb == 1 {
            rhs.reshape(&[-1, 1])?
        } else {
            rhs.clone()
        };
        let out = self
            .graph
            .push("matmul", &[&a, &b], |ctx, t| {
                Ok((Op::MatMul, vec![op::infer_matmul(ctx, &t[0], &t[1])?]))
            })
            .map(first)?;
        if ra > 1 && rb > 1 {
            return Ok(out);
        }
        let mut dims: Vec<isize> = out.shape().dims().iter().map(|&d| d as isize).collect();
        let r = dims.len();
        if rb == 1 {
            dims.remove(r - 1);
        }
        if ra == 1 {
            dims.remove(r - 2);
        }
        out.reshape(&dims)
    }

    #[track_caller]
    fn reduce(&self, op: ReduceOp, axes: &[isize], keep_dims: bool) -> Result<Tensor> {
        self.graph
            .push(op.name(), &[self], |ctx, t| {
                let (op, ty) = op::infer_reduce(ctx, op, &t[0], axes, keep_dims)?;
                Ok((op, vec![ty]))
            })
            .map(first)
    }

    /// Sum over `axes` (empty: all axes).
    #[track_caller]
    pub fn sum(&self, axes: &[isize], keep_dims: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, axes, keep_dims)
    }

    /// Mean over `axes` (empty: all axes). On `i32` it truncates.
    #[track_caller]
    pub fn mean(&self, axes: &[isize], keep_dims: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, axes, keep_dims)
    }

    /// Maximum over `axes` (empty: all axes).
    #[track_caller]
    pub fn max(&self, axes: &[isize], keep_dims: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, axes, keep_dims)
    }

    /// Minimum over `axes` (empty: all axes).
    #[track_caller]
    pub fn min(&self, axes: &[isize], keep_dims: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Min, axes, keep_dims)
    }

    /// One reduction chosen at run time.
    #[track_caller]
    pub fn apply_reduce(&self, op: ReduceOp, axes: &[isize], keep_dims: bool) -> Result<Tensor> {
        self.reduce(op, axes, keep_dims)
    }

    /// Same elements, new shape; one dimension may be `-1` (inferred).
    #[track_caller]
    pub fn reshape(&self, dims: &[isize]) -> Result<Tensor> {
        self.graph
            .push("reshape", &[self], |ctx, t| {
                let ty = op::infer_reshape(ctx, &t[0], dims)?;
                Ok((Op::Layout(LayoutOp::Reshape(ty.shape.clone())), vec![ty]))
            })
            .map(first)
    }

    /// Reorders axes: output axis `i` is input axis `perm[i]`.
    #[track_caller]
    pub fn permute(&self, perm: &[isize]) -> Result<Tensor> {
        self.graph
            .push("permute", &[self], |ctx, t| {
                let (perm, ty) = op::infer_permute(ctx, &t[0], perm)?;
                Ok((Op::Layout(LayoutOp::Permute(perm)), vec![ty]))
            })
            .map(first)
    }

    /// Swaps two axes.
    #[track_caller]
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let rank = self.shape().rank();
        let mut perm: Vec<isize> = (0..rank as isize).collect();
        match (
            crate::shape::normalize_axis(a, rank),
            crate::shape::normalize_axis(b, rank),
        ) {
            (Some(x), Some(y)) => perm.swap(x, y),
            // Let the permute rule report the bad axis.
            _ => perm = vec![a, b],
        }
        self.permute(&perm)
    }

    /// Broadcasts to `shape` by NumPy rules.
    #[track_caller]
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        self.graph
            .push("broadcast_to", &[self], |ctx, t| {
                let ty = op::infer_broadcast_to(ctx, &t[0], &shape)?;
                Ok((Op::Layout(LayoutOp::BroadcastTo(shape.clone())), vec![ty]))
            })
            .map(first)
    }

    /// `self[start..end]` on one axis; negative indices count from the end
    /// and out-of-range bounds clamp, as in NumPy.
    #[track_caller]
    pub fn slice(&self, axis: isize, start: isize, end: isize) -> Result<Tensor> {
        self.slice_step(axis, start, end, 1)
    }

    /// `self[start..end:step]` on one axis (step >= 1).
    #[track_caller]
    pub fn slice_step(&self, axis: isize, start: isize, end: isize, step: isize) -> Result<Tensor> {
        self.graph
            .push("slice", &[self], |ctx, t| {
                let (ranges, ty) = op::infer_slice(ctx, &t[0], axis, start, end, step)?;
                Ok((Op::Layout(LayoutOp::Slice(ranges)), vec![ty]))
            })
            .map(first)
    }

    /// Cuts along `axis` into equal parts or parts of given sizes: a
    /// multi-output node, one tensor per part.
    #[track_caller]
    pub fn split(&self, axis: isize, spec: SplitSpec) -> Result<Vec<Tensor>> {
        self.graph.push("split", &[self], |ctx, t| {
            op::infer_split(ctx, &t[0], axis, &spec)
        })
    }

    /// Converts elements to `dtype`.
    #[track_caller]
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        self.graph
            .push("cast", &[self], |_, t| {
                Ok((
                    Op::Cast(dtype),
                    vec![TensorType::new(dtype, t[0].shape.clone())],
                ))
            })
            .map(first)
    }

    /// Softmax along `axis`, built from primitives and numerically stable:
    /// `exp(x - max) / sum(exp(x - max))`.
    #[track_caller]
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        if !self.dtype().is_float() {
            return self
                .graph
                .push("softmax", &[self], |ctx, t| {
                    Err(crate::Error::UnsupportedDType {
                        ctx: Box::new(ctx.clone()),
                        dtype: t[0].dtype,
                        shape: t[0].shape.clone(),
                        hint: "; cast to f32 first",
                    })
                })
                .map(first);
        }
        let m = self.max(&[axis], true)?;
        let e = self.sub(&m)?.exp()?;
        let s = e.sum(&[axis], true)?;
        e.div(&s)
    }

    /// The op of the producing node.
    pub fn op(&self) -> Option<Op> {
        let g = self.graph.lock();
        g.dag.node_weight(self.port.node.0).map(|n| n.op.clone())
    }
}

// --- operator overloads: same code as the methods, panicking on error ---

macro_rules! binary_overload {
    ($trait:ident, $method:ident) => {
        impl ops::$trait<&Tensor> for &Tensor {
            type Output = Tensor;
            /// # Panics
            /// On shapes that do not broadcast or dtypes that differ, with
            /// the message the `Result` method returns.
            #[track_caller]
            fn $method(self, rhs: &Tensor) -> Tensor {
                Tensor::$method(self, rhs).unwrap_or_else(|e| panic!("{e}"))
            }
        }
        impl ops::$trait<Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: Tensor) -> Tensor {
                ops::$trait::$method(&self, &rhs)
            }
        }
        impl ops::$trait<&Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: &Tensor) -> Tensor {
                ops::$trait::$method(&self, rhs)
            }
        }
        impl ops::$trait<f32> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: f32) -> Tensor {
                let r = self.scalar_like(f64::from(rhs));
                ops::$trait::$method(self, &r)
            }
        }
        impl ops::$trait<f32> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: f32) -> Tensor {
                ops::$trait::$method(&self, rhs)
            }
        }
        impl ops::$trait<&Tensor> for f32 {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: &Tensor) -> Tensor {
                let l = rhs.scalar_like(f64::from(self));
                ops::$trait::$method(&l, rhs)
            }
        }
    };
}

binary_overload!(Add, add);
binary_overload!(Sub, sub);
binary_overload!(Mul, mul);
binary_overload!(Div, div);

impl ops::Neg for &Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        Tensor::neg(self).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl ops::Neg for Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        -&self
    }
}
