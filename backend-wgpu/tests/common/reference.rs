//! Plain scalar semantics of every elementwise op (the CPU backend's
//! rules) and an ndarray evaluation of fused programs built on them.

use ndarray::{ArrayD, IxDyn, Zip};
use tensorgraph_core::{BinaryOp, DType, FusedExpr, Instr, Scalar, UnaryOp, Value};

/// `op` on one f32.
pub fn f32_unary(op: UnaryOp, v: f32) -> f32 {
    match op {
        UnaryOp::Neg => -v,
        UnaryOp::Abs => v.abs(),
        UnaryOp::Exp => v.exp(),
        UnaryOp::Log => v.ln(),
        UnaryOp::Sqrt => v.sqrt(),
        UnaryOp::Relu if v < 0.0 => 0.0,
        UnaryOp::Relu => v,
        UnaryOp::Tanh => v.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        UnaryOp::Sin => v.sin(),
        UnaryOp::Cos => v.cos(),
    }
}

/// `op` on one i32 (wrapping).
pub fn i32_unary(op: UnaryOp, v: i32) -> i32 {
    match op {
        UnaryOp::Neg => v.wrapping_neg(),
        UnaryOp::Abs => v.wrapping_abs(),
        UnaryOp::Relu => v.max(0),
        _ => panic!("{} is float-only", op.name()),
    }
}

/// `op` on two f32s (NaN-propagating max and min).
pub fn f32_binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max | BinaryOp::Min if a.is_nan() || b.is_nan() => f32::NAN,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Pow => a.powf(b),
    }
}

/// `op` on two i32s (wrapping; division by zero is 0).
pub fn i32_binary(op: BinaryOp, a: i32, b: i32) -> i32 {
    match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        BinaryOp::Div if b == 0 => 0,
        BinaryOp::Div => a.wrapping_div(b),
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Pow if b >= 0 => a.wrapping_pow(b as u32),
        BinaryOp::Pow => match a {
            1 => 1,
            -1 if b % 2 == 0 => 1,
            -1 => -1,
            _ => 0,
        },
    }
}

/// The program evaluated with plain ndarray, every operand broadcast to
/// `dims` by ndarray's own (NumPy) rules.
pub fn reference(expr: &FusedExpr, inputs: &[Value], dims: &[usize]) -> Value {
    let shape = IxDyn(dims);
    let mut vals: Vec<Value> = Vec::new();
    for instr in &expr.instrs {
        let f = |i: usize| vals[i].as_f32().expect("f32 value");
        let n = |i: usize| vals[i].as_i32().expect("i32 value");
        let v = match *instr {
            Instr::Input(k) => match &inputs[k] {
                Value::F32(a) => Value::F32(a.broadcast(shape.clone()).expect("bc").to_owned()),
                Value::I32(a) => Value::I32(a.broadcast(shape.clone()).expect("bc").to_owned()),
            },
            Instr::Scalar(Scalar::F32(x)) => Value::F32(ArrayD::from_elem(shape.clone(), x)),
            Instr::Scalar(Scalar::I32(x)) => Value::I32(ArrayD::from_elem(shape.clone(), x)),
            Instr::Unary(op, a) => match &vals[a] {
                Value::F32(x) => Value::F32(x.mapv(|v| f32_unary(op, v))),
                Value::I32(x) => Value::I32(x.mapv(|v| i32_unary(op, v))),
            },
            Instr::Binary(op, a, b) => match &vals[a] {
                Value::F32(_) => Value::F32(
                    Zip::from(f(a))
                        .and(f(b))
                        .map_collect(|&p, &q| f32_binary(op, p, q)),
                ),
                Value::I32(_) => Value::I32(
                    Zip::from(n(a))
                        .and(n(b))
                        .map_collect(|&p, &q| i32_binary(op, p, q)),
                ),
            },
            Instr::Cast(to, a) => match (&vals[a], to) {
                (Value::F32(x), DType::I32) => Value::I32(x.mapv(|v| v as i32)),
                (Value::I32(x), DType::F32) => Value::F32(x.mapv(|v| v as f32)),
                (v, _) => v.clone(),
            },
        };
        vals.push(v);
    }
    vals.pop().expect("a result")
}
