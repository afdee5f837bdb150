//! Fusion: an 8-op elementwise chain over 16M f32, fused by the compiler,
//! against plain ndarray evaluated op by op and against STREAM triads
//! (`a = b + s * c`, rayon-parallel; plain stores into a reused output,
//! streaming stores, a new output) over the same element count, all in
//! one run. Bytes reported are what the fused kernel moves (read x, write
//! the result); the triads move 12 bytes per element.
//!
//! `fused_chain8_gpu_16M` runs the chain's fused kernel, as the compiler
//! lowers it for the GPU, on buffers already on the device, against a
//! buffer-to-buffer copy of the same bytes (64 MB read, 64 MB written).

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

/// `a = b + 3c` in parallel parts, each written with non-temporal
/// stores as STREAM builds for large arrays do (no read of `a`'s lines
/// before writing them), where the CPU has AVX; a plain loop elsewhere.
fn triad_streaming(a: &mut [f32], b: &[f32], c: &[f32]) {
    use rayon::prelude::*;
    const PART: usize = 1 << 16;
    a.par_chunks_mut(PART)
        .zip(b.par_chunks(PART))
        .zip(c.par_chunks(PART))
        .for_each(|((a, b), c)| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has AVX.
                unsafe { triad_avx(a, b, c) };
                return;
            }
            triad_plain(a, b, c);
        });
}

fn triad_plain(a: &mut [f32], b: &[f32], c: &[f32]) {
    a.iter_mut()
        .zip(b.iter().zip(c))
        .for_each(|(a, (&b, &c))| *a = b + 3.0 * c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn triad_avx(a: &mut [f32], b: &[f32], c: &[f32]) {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len()).min(c.len());
    let head = a.as_ptr().align_offset(32).min(n);
    let body = head + (n - head) / 8 * 8;
    triad_plain(&mut a[..head], &b[..head], &c[..head]);
    let three = _mm256_set1_ps(3.0);
    for i in (head..body).step_by(8) {
        // SAFETY: `i + 8 <= body <= n` for all three slices; `a + i` is
        // 32-byte aligned (`head` aligned it, steps are 32 bytes).
        unsafe {
            let v = _mm256_add_ps(
                _mm256_loadu_ps(b.as_ptr().add(i)),
                _mm256_mul_ps(three, _mm256_loadu_ps(c.as_ptr().add(i))),
            );
            _mm256_stream_ps(a.as_mut_ptr().add(i), v);
        }
    }
    triad_plain(&mut a[body..n], &b[body..n], &c[body..n]);
    _mm_sfence();
}

/// The chain as one compiled loop: what a JIT of the fused expression
/// could reach. AVX-512, one vector through all eight ops at a time, the
/// same NaN-propagating `max` and `relu` blends as the fused kernel, and
/// streaming stores; rayon-parallel like the triads.
#[cfg(target_arch = "x86_64")]
fn chain_hand_written(x: &[f32], out: &mut [f32]) {
    use rayon::prelude::*;
    const PART: usize = 1 << 16;
    assert!(
        std::arch::is_x86_feature_detected!("avx512f"),
        "the hand-written chain needs AVX-512F"
    );
    out.par_chunks_mut(PART)
        .zip(x.par_chunks(PART))
        // SAFETY: checked above: the CPU has AVX-512F.
        .for_each(|(o, x)| unsafe { chain_avx512(x, o) });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn chain_avx512(x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(x.len());
    let head = out.as_ptr().align_offset(64).min(n);
    let body = head + (n - head) / 16 * 16;
    let scalar = |x: f32| {
        let t = (x * 1.5 + 0.5).max(0.0) * x - 0.25;
        t.abs().sqrt().max(x) - x
    };
    for i in (0..head).chain(body..n) {
        out[i] = scalar(x[i]);
    }
    let max = |a: __m512, b: __m512| {
        let pick = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(a, b), b, a);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b);
        _mm512_mask_blend_ps(nan, pick, _mm512_set1_ps(f32::NAN))
    };
    for i in (head..body).step_by(16) {
        // SAFETY: `i + 16 <= body <= n` for both slices; `out + i` is
        // 64-byte aligned (`head` aligned it, steps are 64 bytes).
        unsafe {
            let v = _mm512_loadu_ps(x.as_ptr().add(i));
            let zero = _mm512_setzero_ps();
            let t = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.5)), _mm512_set1_ps(0.5));
            let t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(t, zero), t, zero);
            let t = _mm512_sub_ps(_mm512_mul_ps(t, v), _mm512_set1_ps(0.25));
            let t = _mm512_abs_ps(t);
            let t = _mm512_sub_ps(max(_mm512_sqrt_ps(t), v), v);
            _mm512_stream_ps(out.as_mut_ptr().add(i), t);
        }
    }
    _mm_sfence();
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
    group.bench_function("stream-triad-streaming-stores", |bench| {
        let (b, c) = (b.as_slice().expect("b"), cc.as_slice().expect("c"));
        let a = a.as_slice_mut().expect("a");
        bench.iter(|| {
            triad_streaming(a, b, c);
            black_box(&a);
        })
    });
    group.bench_function("stream-triad-new-output", |bench| {
        bench.iter(|| black_box(Zip::from(&b).and(&cc).par_map_collect(|&b, &c| b + 3.0 * c)))
    });
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let want = chain_ndarray(&x);
        let (x, a) = (x.as_slice().expect("x"), a.as_slice_mut().expect("a"));
        chain_hand_written(x, a);
        assert_eq!(a, want.as_slice().expect("want"), "the hand-written chain");
        group.bench_function("hand-written-avx512-loop-streaming-stores", |bench| {
            bench.iter(|| {
                chain_hand_written(x, a);
                black_box(&a);
            })
        });
    }
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
    let mut group = group_1m(c, "fused_chain8_1M", M);
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

/// The chain's fused kernel on the GPU against a copy of the same bytes,
/// both on device-resident buffers: `PER_SYNC` submissions, then one wait,
/// per timed iteration (each kernel's own submission overlaps the GPU's
/// work on the previous ones, as in a plan's segment). On a software
/// adapter the figures say nothing about GPUs.
#[cfg(feature = "gpu")]
fn fusion_gpu(c: &mut Criterion) {
    use std::time::Instant;
    use tensorgraph::core::{Backend, Kernel, Meter, Op};
    use tensorgraph_wgpu::WgpuBackend;

    const PER_SYNC: u32 = 8;
    let gpu = match WgpuBackend::new() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("fused_chain8_gpu skipped: {e}");
            return;
        }
    };
    eprintln!("fused_chain8_gpu on {}", gpu.name());
    // The fused kernel the compiler makes of the chain for the GPU.
    let g = Graph::new();
    let out = chain(&g);
    let plan = g
        .compile(&[&out], &tensorgraph::options(Device::Gpu).expect("gpu"))
        .expect("compile");
    let fused: Vec<&Kernel> = plan
        .steps()
        .iter()
        .map(|s| &s.kernel)
        .filter(|k| matches!(k.op, Op::Fused(_)))
        .collect();
    let [fused] = fused[..] else {
        panic!("the chain should fuse into one kernel, got {}", fused.len());
    };
    let x = ArrayD::from_shape_fn(IxDyn(&[N]), |i| (i[0] % 1000) as f32 * 0.002 - 1.0);
    let x = Value::from(x);
    let meter = Meter::default();
    let on_gpu = gpu.upload(&x, &meter).expect("upload");
    // A same-type cast is lowered to `copy_buffer_to_buffer`.
    let copy = Kernel {
        op: Op::Cast(DType::F32),
        inputs: vec![x.ty()],
        outputs: vec![x.ty()],
    };
    let timed = |kernel: &Kernel, iters: u64| {
        let start = Instant::now();
        for _ in 0..iters {
            for _ in 0..PER_SYNC {
                for y in gpu.run_kernel(kernel, &[on_gpu], &meter).expect("run") {
                    gpu.free(y, &meter).expect("free");
                }
            }
            gpu.synchronize().expect("sync");
        }
        start.elapsed() / PER_SYNC
    };
    let mut group = c.benchmark_group("fused_chain8_gpu_16M");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(8 * N as u64));
    group.bench_function("buffer-copy", |b| b.iter_custom(|i| timed(&copy, i)));
    group.bench_function("tensorgraph-gpu-fused", |b| {
        b.iter_custom(|i| timed(fused, i))
    });
    group.finish();
    gpu.free(on_gpu, &meter).expect("free");
}

#[cfg(not(feature = "gpu"))]
fn fusion_gpu(_: &mut Criterion) {}

/// Quantise to i32 and back over 1M elements (8 MB moved): casts and
/// integer ops fused with float ones, against ndarray op by op.
/// `x*127 -> i32, max -127, min 127 -> f32, *(1/127), x - that`.
fn fusion_with_casts(c: &mut Criterion) {
    const M: usize = 1 << 20;
    let mut group = group_1m(c, "fused_quantise_1M", M);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [M]).expect("input");
    let q = (&x * 127.0).cast(DType::I32).expect("cast");
    let q = q
        .maximum(&g.constant(-127i32))
        .and_then(|q| q.minimum(&g.constant(127i32)))
        .expect("clamp");
    let back = q.cast(DType::F32).expect("cast") * (1.0 / 127.0);
    let err = &x - &back;
    let plan = g
        .compile(&[&err], &tensorgraph::options(Device::Cpu).expect("cpu"))
        .expect("compile");
    let xv = ArrayD::from_shape_fn(IxDyn(&[M]), |i| (i[0] % 1000) as f32 * 0.0023 - 1.1);
    let feeds = [("x", Value::from(xv.clone()))];
    let mut outputs = plan.run(&feeds).expect("run");
    // Kept to the end: freeing it lets glibc trim its heap, and every
    // ndarray iteration then faults its arrays in afresh (13-15 ms against
    // 5.5-6.3 ms here), which would flatter the comparison.
    let reference = quantise_ndarray(&xv);
    assert_eq!(
        outputs[0].as_f32(),
        Some(&reference),
        "the fused quantisation"
    );
    group.bench_function("ndarray-op-by-op", |bench| {
        bench.iter(|| black_box(quantise_ndarray(&xv)))
    });
    group.bench_function("tensorgraph-cpu-fused-run-into", |bench| {
        bench.iter(|| {
            plan.run_into(&feeds, &mut outputs).expect("run_into");
            black_box(&outputs);
        })
    });
    group.finish();
    drop(reference);
}

/// [`fusion_with_casts`]'s pipeline, one ndarray op at a time.
fn quantise_ndarray(x: &ArrayD<f32>) -> ArrayD<f32> {
    let q = x.mapv(|v| v * 127.0);
    let q = q.mapv(|v| v as i32);
    let q = q.mapv(|v| v.max(-127));
    let q = q.mapv(|v| v.min(127));
    let b = q.mapv(|v| v as f32);
    let b = b * (1.0 / 127.0);
    x - &b
}

/// A group over `m` elements that fit in cache: short samples.
fn group_1m<'a>(
    c: &'a mut Criterion,
    name: &str,
    m: usize,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(m as u64));
    group
}

criterion_group!(
    benches,
    fusion,
    fusion_in_cache,
    fusion_with_casts,
    fusion_gpu
);
criterion_main!(benches);
