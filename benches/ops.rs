//! CPU vs GPU vs plain ndarray on the same inputs: an 8-op elementwise
//! chain, a reduction, tall-skinny matmul and an MLP forward pass. GPU
//! timings include the device sync (`run` returns downloaded outputs).

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use ndarray::{ArrayD, Axis, Ix2};
use tensorgraph::{DType, Graph, Tensor, Value};

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
}

/// Benches `build`'s graph on every device with the given feeds.
fn bench_devices(
    group: &mut BenchmarkGroup<'_, WallTime>,
    size: usize,
    feeds: &[(&str, Value)],
    build: impl Fn(&Graph) -> Tensor,
) {
    for (device, label) in common::devices() {
        let g = Graph::new();
        let out = build(&g);
        let plan = g
            .compile(&[&out], &tensorgraph::options(device).expect("device"))
            .expect("compile");
        group.bench_with_input(BenchmarkId::new(label, size), &size, |b, _| {
            b.iter(|| black_box(plan.run(feeds).expect("run")))
        });
    }
}

/// x*1.5 + 0.5, relu, *x, -0.25, abs, sqrt, max with x, -x : eight ops.
fn chain_graph(g: &Graph, n: usize) -> Tensor {
    let x = g.input("x", DType::F32, [n]).expect("input");
    let t = (&x * 1.5 + 0.5).relu().expect("relu");
    let t = &t * &x - 0.25;
    let t = t.abs().expect("abs").sqrt().expect("sqrt");
    t.maximum(&x).expect("max") - &x
}

fn chain_ndarray(x: &ArrayD<f32>) -> ArrayD<f32> {
    let t = (x * 1.5 + 0.5).mapv(|v| v.max(0.0));
    let t = &t * x - 0.25;
    let t = t.mapv(f32::abs).mapv(f32::sqrt);
    let t = ndarray::Zip::from(&t).and(x).map_collect(|&a, &b| a.max(b));
    t - x
}

fn elementwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise_chain8");
    configure(&mut group);
    for &n in &[1_000usize, 100_000, 10_000_000] {
        let x = common::random(&[n], 3);
        // Bytes touched by a fused chain: read x, write the result.
        group.throughput(Throughput::Bytes(8 * n as u64));
        group.bench_with_input(BenchmarkId::new("ndarray", n), &n, |b, _| {
            b.iter(|| black_box(chain_ndarray(&x)))
        });
        bench_devices(&mut group, n, &[("x", Value::from(x.clone()))], |g| {
            chain_graph(g, n)
        });
    }
    group.finish();
}

fn reduction(c: &mut Criterion) {
    let mut group = c.benchmark_group("reduce_sum_rows");
    configure(&mut group);
    for &(rows, cols) in &[(1024usize, 1024usize), (4096, 4096)] {
        let x = common::random(&[rows, cols], 4);
        let n = rows * cols;
        group.throughput(Throughput::Bytes(4 * n as u64));
        group.bench_with_input(BenchmarkId::new("ndarray", n), &n, |b, _| {
            b.iter(|| black_box(x.sum_axis(Axis(1))))
        });
        bench_devices(&mut group, n, &[("x", Value::from(x.clone()))], |g| {
            let x = g.input("x", DType::F32, [rows, cols]).expect("input");
            x.sum(&[1], false).expect("sum")
        });
    }
    group.finish();
}

fn tall_skinny(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_tall_skinny");
    configure(&mut group);
    for &(m, k, n) in &[(65_536usize, 64usize, 64usize), (16_384, 256, 32)] {
        let a = common::random(&[m, k], 5);
        let b = common::random(&[k, n], 6);
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        let (a2, b2) = (
            a.clone().into_dimensionality::<Ix2>().expect("2-D"),
            b.clone().into_dimensionality::<Ix2>().expect("2-D"),
        );
        group.bench_with_input(BenchmarkId::new("ndarray-dot", m), &m, |bench, _| {
            bench.iter(|| black_box(a2.dot(&b2)))
        });
        let feeds = [("a", Value::from(a.clone())), ("b", Value::from(b.clone()))];
        bench_devices(&mut group, m, &feeds, |g| {
            let x = g.input("a", DType::F32, [m, k]).expect("input");
            let y = g.input("b", DType::F32, [k, n]).expect("input");
            x.matmul(&y).expect("matmul")
        });
    }
    group.finish();
}

fn mlp(c: &mut Criterion) {
    let mut group = c.benchmark_group("mlp_forward");
    configure(&mut group);
    let (batch, d_in, d_h, d_out) = (512usize, 784usize, 1024usize, 10usize);
    let x = common::random(&[batch, d_in], 7);
    let w1 = common::random(&[d_in, d_h], 8)
        .into_dimensionality::<Ix2>()
        .expect("2-D");
    let w2 = common::random(&[d_h, d_out], 9)
        .into_dimensionality::<Ix2>()
        .expect("2-D");
    group.throughput(Throughput::Elements(
        2 * (batch * (d_in * d_h + d_h * d_out)) as u64,
    ));
    let x2 = x.clone().into_dimensionality::<Ix2>().expect("2-D");
    group.bench_function(BenchmarkId::new("ndarray", batch), |b| {
        b.iter(|| {
            let h = x2.dot(&w1).mapv(|v| v.max(0.0));
            black_box(h.dot(&w2))
        })
    });
    bench_devices(&mut group, batch, &[("x", Value::from(x.clone()))], |g| {
        let xin = g.input("x", DType::F32, [batch, d_in]).expect("input");
        let h = xin
            .matmul(&g.constant(w1.clone()))
            .expect("mm")
            .relu()
            .expect("relu");
        h.matmul(&g.constant(w2.clone())).expect("mm")
    });
    group.finish();
}

/// One large matmul and many small elementwise ops, placed by the cost
/// model (`auto`), all on the CPU, and all on the GPU.
fn placement(c: &mut Criterion) {
    use tensorgraph::Device;
    let mut group = c.benchmark_group("placement_mlp");
    configure(&mut group);
    let (batch, d_in, d_h) = (256usize, 1024usize, 1024usize);
    let x = common::random(&[batch, d_in], 10);
    let w = common::random(&[d_in, d_h], 11);
    let small = common::random(&[64], 12);
    let build = |g: &Graph| {
        let xin = g.input("x", DType::F32, [batch, d_in]).expect("input");
        let h = xin
            .matmul(&g.constant(w.clone()))
            .expect("mm")
            .relu()
            .expect("relu");
        let feature = h
            .mean(&[0], false)
            .expect("mean")
            .slice(0, 0, 64)
            .expect("slice");
        // Thirty small elementwise ops on a 64-vector.
        let mut t = g.constant(small.clone());
        for i in 0..30 {
            t = match i % 3 {
                0 => t.add(&feature).expect("add"),
                1 => t.tanh().expect("tanh"),
                _ => (&t * 0.5).sin().expect("sin"),
            };
        }
        t
    };
    let feeds = [("x", Value::from(x.clone()))];
    for device in [Device::Auto, Device::Cpu, Device::Gpu] {
        let Ok(options) = tensorgraph::options(device) else {
            eprintln!("placement bench: {device} unavailable");
            continue;
        };
        let g = Graph::new();
        let out = build(&g);
        let plan = g.compile(&[&out], &options).expect("compile");
        let on_gpu = plan
            .steps()
            .iter()
            .filter(|s| plan.step_device(s) == Device::Gpu)
            .count();
        eprintln!(
            "placement {device}: {on_gpu} of {} steps on the GPU",
            plan.steps().len()
        );
        group.bench_function(BenchmarkId::new(device.name(), batch), |b| {
            b.iter(|| black_box(plan.run(&feeds).expect("run")))
        });
    }
    group.finish();
}

/// A transposed copy: ndarray's row-major copy of `x.t()` against a
/// permute on the CPU backend (its result is a fresh row-major array too).
fn transpose(c: &mut Criterion) {
    let mut group = c.benchmark_group("transpose_copy");
    configure(&mut group);
    for &n in &[1024usize, 4096] {
        let x = common::random(&[n, n], 5);
        group.throughput(Throughput::Bytes(8 * (n * n) as u64));
        group.bench_with_input(BenchmarkId::new("ndarray", n), &n, |b, _| {
            b.iter(|| black_box(x.t().as_standard_layout().into_owned()))
        });
        let g = Graph::new();
        let xt = g.input("x", DType::F32, [n, n]).expect("input");
        let out = xt.permute(&[1, 0]).expect("permute");
        let plan = g
            .compile(
                &[&out],
                &tensorgraph::options(tensorgraph::Device::Cpu).expect("cpu"),
            )
            .expect("compile");
        let feeds = [("x", Value::from(x.clone()))];
        group.bench_with_input(BenchmarkId::new("tensorgraph-cpu", n), &n, |b, _| {
            b.iter(|| black_box(plan.run(&feeds).expect("run")))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    elementwise,
    reduction,
    tall_skinny,
    mlp,
    placement,
    transpose
);
criterion_main!(benches);
