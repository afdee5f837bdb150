//! Times a fused eight-op f32 chain (two operands in, one out) against a
//! plain buffer copy moving the same bytes, both driven through the
//! backend; the goal on a real GPU is a ratio under 1.3.
//!
//! `cargo run --release -p tensorgraph-wgpu --example fused_vs_copy [log2 n]`

use std::sync::Arc;
use std::time::Instant;

use tensorgraph_core::{
    Backend, BinaryOp, DType, FusedExpr, Instr, Kernel, Meter, Op, Scalar, TensorType, UnaryOp,
    Value,
};
use tensorgraph_wgpu::WgpuBackend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let log2: u32 = std::env::args().nth(1).map_or(Ok(24), |a| a.parse())?;
    let n = 1usize << log2;
    let gpu = WgpuBackend::new()?;
    println!("device: {}", gpu.name());
    let meter = Meter::default();
    let f = DType::F32;
    let expr = Arc::new(FusedExpr {
        instrs: vec![
            Instr::Input(0),
            Instr::Input(1),
            Instr::Binary(BinaryOp::Mul, 0, 1),
            Instr::Scalar(Scalar::F32(0.5)),
            Instr::Binary(BinaryOp::Add, 2, 3),
            Instr::Unary(UnaryOp::Tanh, 4),
            Instr::Binary(BinaryOp::Max, 5, 0),
            Instr::Unary(UnaryOp::Exp, 6),
            Instr::Unary(UnaryOp::Sigmoid, 1),
            Instr::Binary(BinaryOp::Add, 7, 8),
            Instr::Unary(UnaryOp::Sqrt, 9),
        ],
        dtypes: vec![f; 11],
    });
    let t = TensorType::new(f, [n]);
    let data = Value::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[n]), 0.25f32));
    let x = gpu.upload(&data, &meter)?;
    let y = gpu.upload(&data, &meter)?;
    // The copy moves 3n floats of traffic too: 1.5n read, 1.5n written.
    let big = Value::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[n * 3 / 2])));
    let c = gpu.upload(&big, &meter)?;
    let fused = Kernel {
        op: Op::Fused(expr),
        inputs: vec![t.clone(), t.clone()],
        outputs: vec![t],
    };
    let copy = Kernel {
        op: Op::Cast(f),
        inputs: vec![big.ty()],
        outputs: vec![big.ty()],
    };
    let time = |kernel: &Kernel,
                inputs: &[tensorgraph_core::BufferId]|
     -> Result<f64, Box<dyn std::error::Error>> {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..10 {
                for out in gpu.run_kernel(kernel, inputs, &meter)? {
                    gpu.free(out, &meter)?;
                }
            }
            gpu.synchronize()?;
            best = best.min(start.elapsed().as_secs_f64() / 10.0);
        }
        Ok(best)
    };
    let tf = time(&fused, &[x, y])?;
    let tc = time(&copy, &[c])?;
    let gb = (3 * n * 4) as f64 / 1e9;
    println!(
        "n = 2^{log2}: fused {:.3} ms ({:.1} GB/s), copy {:.3} ms ({:.1} GB/s), ratio {:.2}",
        tf * 1e3,
        gb / tf,
        tc * 1e3,
        gb / tc,
        tf / tc
    );
    Ok(())
}
