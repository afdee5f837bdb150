//! Fusion: an 8-op elementwise chain over 16M f32, fused by the compiler,
//! against plain ndarray evaluated op by op and against a STREAM triad
//! (`a = b + s * c`, rayon-parallel) over the same element count, all in
//! one run. Bytes reported are what the fused kernel moves (read x, write
//! the result); the triad moves 12 bytes per element.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{ArrayD, IxDyn, Zip};
use tensorgraph::{DType, Device, Graph, PassOptions, Tensor, Value};

const N: usize = 1 << 24;

/// x*1.5 + 0.5, relu, *x, -0.25, abs, sqrt, max with x, -x : eight ops.
fn chain(g: &Graph) -> Tensor {
    chain_of(g, N)
}

/// [`chain`] over `n` elements.
fn chain_of(g: &Graph, n: usize) -> Tensor {
    let x = g.input("x", DType::F32, [n]).expect("input");
    let t = (&x * 1.5 + 0.5).relu().expect("relu");
    let t = &t * &x - 0.25;
    let t = t.abs().expect("abs").sqrt().expect("sqrt");
    t.maximum(&x).expect("max") - &x
}

fn chain_ndarray(x: &ArrayD<f32>) -> ArrayD<f32> {
    let t = x * 1.5;
    let t = t + 0.5;
    let t = t.mapv(|v| v.max(0.0));
    let t = &t * x;
    let t = t - 0.25;
    let t = t.mapv(f32::abs);
    let t = t.mapv(f32::sqrt);
    let t = Zip::from(&t).and(x).map_collect(|&a, &b| a.max(b));
    t - x
}

fn fusion(c: &mut Criterion) {
    let mut group = c.benchmark_group("fused_chain8_16M");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(8 * N as u64));
    let x = ArrayD::from_shape_fn(IxDyn(&[N]), |i| (i[0] % 1000) as f32 * 0.002 - 1.0);
    let b = x.clone();
    let cc = x.mapv(|v| v * 0.5);
    let mut a = ArrayD::<f32>::zeros(IxDyn(&[N]));

    group.bench_function("ndarray-op-by-op", |bench| {
        bench.iter(|| black_box(chain_ndarray(&x)))
    });
    group.bench_function("stream-triad-reused-output", |bench| {
        bench.iter(|| {
            Zip::from(&mut a)
                .and(&b)
                .and(&cc)
                .par_for_each(|a, &b, &c| *a = b + 3.0 * c);
            black_box(&a);
        })
    });
    group.bench_function("stream-triad-new-output", |bench| {
        bench.iter(|| black_box(Zip::from(&b).and(&cc).par_map_collect(|&b, &c| b + 3.0 * c)))
    });
    let feeds = [("x", Value::from(x.clone()))];
    for (label, fused) in [
        ("tensorgraph-cpu-fused", true),
        ("tensorgraph-cpu-unfused", false),
    ] {
        let g = Graph::new();
        let out = chain(&g);
        let mut options = tensorgraph::options(Device::Cpu).expect("cpu");
        if !fused {
            options.passes = PassOptions::none();
        }
        let plan = g.compile(&[&out], &options).expect("compile");
        eprintln!("{label}: {} steps", plan.steps().len());
        group.bench_function(BenchmarkId::new(label, N), |bench| {
            bench.iter(|| black_box(plan.run(&feeds).expect("run")))
        });
        if fused {
            // The same plan writing into the previous result's storage:
            // no fresh 64 MB output (and no page faults on it) per run.
            let mut outputs = plan.run(&feeds).expect("run");
            group.bench_function(
                BenchmarkId::new("tensorgraph-cpu-fused-run-into", N),
                |bench| {
                    bench.iter(|| {
                        plan.run_into(&feeds, &mut outputs).expect("run_into");
                        black_box(&outputs);
                    })
                },
            );
        }
    }
    group.finish();
}

/// The same chain over 1M elements (8 MB moved, cache-resident on most
/// servers): what the fused kernel costs when memory is not the limit.
fn fusion_in_cache(c: &mut Criterion) {
    const M: usize = 1 << 20;
    let mut group = c.benchmark_group("fused_chain8_1M");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(M as u64));
    let g = Graph::new();
    let out = chain_of(&g, M);
    let plan = g
        .compile(&[&out], &tensorgraph::options(Device::Cpu).expect("cpu"))
        .expect("compile");
    let x = ArrayD::from_shape_fn(IxDyn(&[M]), |i| (i[0] % 1000) as f32 * 0.002 - 1.0);
    let feeds = [("x", Value::from(x))];
    let mut outputs = plan.run(&feeds).expect("run");
    group.bench_function("tensorgraph-cpu-fused-run-into", |bench| {
        bench.iter(|| {
            plan.run_into(&feeds, &mut outputs).expect("run_into");
            black_box(&outputs);
        })
    });
    group.finish();
}

criterion_group!(benches, fusion, fusion_in_cache);
criterion_main!(benches);
