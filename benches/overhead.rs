//! Per-node overhead: a chain of 10,000 tiny elementwise ops, compiled and
//! run. Criterion reports time per element = per node.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tensorgraph::{DType, Device, Graph, Tensor, Value};

const NODES: usize = 10_000;

fn chain() -> (Graph, Tensor) {
    let g = Graph::new();
    let mut t = g.input("x", DType::F32, [4]).expect("input");
    let one = g.scalar(1.0);
    let half = g.scalar(0.5);
    for i in 0..NODES {
        t = match i % 4 {
            0 => t.add(&one),
            1 => t.mul(&half),
            2 => t.neg(),
            _ => t.abs(),
        }
        .expect("op");
    }
    (g, t)
}

fn overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("overhead");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(NODES as u64));
    let (g, t) = chain();
    let options = tensorgraph::options(Device::Cpu).expect("cpu");
    group.bench_function("compile_10k_chain", |b| {
        b.iter(|| black_box(g.compile(&[&t], &options).expect("compile")))
    });
    let feeds = [("x", Value::from(ndarray::arr1(&[1.0f32, -2.0, 3.0, 0.5])))];
    // Node by node (every pass off): the executor's own per-node cost.
    let mut unfused = options.clone();
    unfused.passes = tensorgraph::PassOptions::none();
    let plan = g.compile(&[&t], &unfused).expect("compile");
    group.bench_function("run_10k_chain_cpu_node_by_node", |b| {
        b.iter(|| black_box(plan.run(&feeds).expect("run")))
    });
    // With the passes: fusion turns the chain into a few kernels.
    let plan = g.compile(&[&t], &options).expect("compile");
    group.bench_function("run_10k_chain_cpu_fused", |b| {
        b.iter(|| black_box(plan.run(&feeds).expect("run")))
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
