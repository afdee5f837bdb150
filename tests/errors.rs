//! Bad input through the `Result` API: each case asserts the exact `Error`
//! variant, that the message names the op, node, shapes and this file,
//! and that the graph still builds and runs a correct computation after.
//! Also: the `std::ops` overloads panic with the `Result` method's message.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use ndarray::{ArrayD, IxDyn};
use tensorgraph::{CompileOptions, DType, Device, Error, Graph, SplitSpec, Tensor, UnaryOp, Value};

fn cpu() -> CompileOptions {
    tensorgraph::options(Device::Cpu).expect("the CPU is always available")
}

fn f32_arr(shape: &[usize]) -> ArrayD<f32> {
    iota_f32(shape)
}

/// The error of a result that must have failed.
#[track_caller]
fn err<T: std::fmt::Debug>(r: tensorgraph::Result<T>) -> Error {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// After an error, the same graph still builds and runs `x * 2 + 1`.
#[track_caller]
fn graph_still_works(g: &Graph, case: &str) {
    let name = format!("after_{case}");
    let x = g
        .input(&name, DType::F32, [3])
        .unwrap_or_else(|e| panic!("{case}: graph no longer builds: {e}"));
    let y = (&x * 2.0 + 1.0).named(&format!("{name}_y"));
    let plan = g
        .compile(&[&y], &cpu())
        .unwrap_or_else(|e| panic!("{case}: graph no longer compiles: {e}"));
    let a = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0f32, -2.0, 0.5]).expect("3");
    let out = plan
        .run(&[(name.as_str(), Value::F32(a))])
        .unwrap_or_else(|e| panic!("{case}: graph no longer runs: {e}"));
    let got = f32_of(out.into_iter().next().expect("one output"));
    let expected = ArrayD::from_shape_vec(IxDyn(&[3]), vec![3.0f32, -3.0, 2.0]).expect("3");
    assert_close(&got, &expected, 0.0, 0.0, case);
}

/// Asserts the message contains every fragment.
#[track_caller]
fn says(e: &Error, fragments: &[&str]) {
    let msg = e.to_string();
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} should mention {f:?}");
    }
}

/// One bad input: builds the error on a fresh graph, checks the variant
/// with `matches!` and the message, then that the graph still works.
macro_rules! bad {
    ($name:ident, |$g:ident| $build:expr, $pat:pat, [$($frag:expr),* $(,)?]) => {
        #[test]
        fn $name() {
            let $g = Graph::new();
            let e: Error = $build;
            assert!(matches!(e, $pat), "{}: wrong variant: {e:?}", stringify!($name));
            says(&e, &[$($frag),*]);
            graph_still_works(&$g, stringify!($name));
        }
    };
}

fn x23(g: &Graph) -> Tensor {
    g.input("x", DType::F32, [2, 3]).expect("input")
}

fn x234(g: &Graph) -> Tensor {
    g.input("x", DType::F32, [2, 3, 4]).expect("input")
}

// --- build errors: op, node name, shapes and errors.rs in the message ---

bad!(
    broadcast,
    |g| {
        let b = g.input("b", DType::F32, [4]).expect("input");
        err(x23(&g).add(&b))
    },
    Error::Broadcast { .. },
    ["add", "add_", "[2, 3]", "[4]", "errors.rs"]
);

bad!(
    broadcast_rank3,
    |g| {
        let b = g.input("b", DType::F32, [5, 1, 4]).expect("input");
        err(x234(&g).mul(&b))
    },
    Error::Broadcast { .. },
    ["mul", "[2, 3, 4]", "[5, 1, 4]", "errors.rs"]
);

bad!(
    dtype_mismatch,
    |g| {
        let b = g.input("b", DType::I32, [2, 3]).expect("input");
        err(x23(&g).sub(&b))
    },
    Error::DTypeMismatch { .. },
    ["sub", "f32", "i32", "[2, 3]", "errors.rs"]
);

bad!(
    dtype_mismatch_matmul,
    |g| {
        let b = g.input("b", DType::I32, [3, 2]).expect("input");
        err(x23(&g).matmul(&b))
    },
    Error::DTypeMismatch { .. },
    ["matmul", "f32", "i32", "errors.rs"]
);

bad!(
    unsupported_dtype_exp_i32,
    |g| {
        let x = g.input("x", DType::I32, [5]).expect("input");
        err(x.exp())
    },
    Error::UnsupportedDType { .. },
    ["exp", "exp_", "i32", "[5]", "errors.rs"]
);

#[test]
fn every_float_only_op_rejects_i32() {
    let g = Graph::new();
    let x = g.input("x", DType::I32, [5]).expect("input");
    for op in UnaryOp::ALL {
        let r = x.apply_unary(op);
        match (op, r) {
            (UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu, r) => {
                assert!(r.is_ok(), "{} is defined on i32", op.name());
            }
            (_, Err(e @ Error::UnsupportedDType { .. })) => {
                says(&e, &[op.name(), "i32", "errors.rs"])
            }
            (_, other) => panic!(
                "{} on i32: expected UnsupportedDType, got {other:?}",
                op.name()
            ),
        }
    }
    let e = err(x.softmax(0));
    assert!(
        matches!(e, Error::UnsupportedDType { .. }),
        "softmax on i32: {e:?}"
    );
    graph_still_works(&g, "float_only");
}

bad!(
    matmul_inner_mismatch,
    |g| {
        let b = g.input("b", DType::F32, [4, 5]).expect("input");
        err(x23(&g).matmul(&b))
    },
    Error::MatMulShape { .. },
    ["matmul", "matmul_", "[2, 3]", "[4, 5]", "errors.rs"]
);

bad!(
    matmul_batch_mismatch,
    |g| {
        let b = g.input("b", DType::F32, [5, 4, 6]).expect("input");
        err(x234(&g).matmul(&b))
    },
    Error::MatMulShape { .. },
    ["matmul", "[2, 3, 4]", "[5, 4, 6]", "errors.rs"]
);

bad!(
    matmul_rank0,
    |g| {
        let s = g.input("s", DType::F32, []).expect("input");
        err(s.matmul(&x23(&g)))
    },
    Error::MatMulShape { .. },
    ["matmul", "[]", "[2, 3]", "errors.rs"]
);

bad!(
    matmul_vec_vec_length_mismatch,
    |g| {
        let a = g.input("a", DType::F32, [3]).expect("input");
        let b = g.input("b", DType::F32, [4]).expect("input");
        err(a.matmul(&b))
    },
    Error::MatMulShape { .. },
    ["matmul", "errors.rs"]
);

bad!(
    axis_out_of_range,
    |g| err(x234(&g).sum(&[3], false)),
    Error::Axis { axis: 3, .. },
    ["sum", "sum_", "axis 3", "[2, 3, 4]", "errors.rs"]
);

bad!(
    axis_negative_out_of_range,
    |g| err(x234(&g).max(&[-4], true)),
    Error::Axis { axis: -4, .. },
    ["max", "-4", "[2, 3, 4]", "errors.rs"]
);

bad!(
    duplicate_axis,
    |g| err(x234(&g).mean(&[0, -3], false)),
    Error::DuplicateAxis { axis: 0, .. },
    ["mean", "[2, 3, 4]", "errors.rs"]
);

bad!(
    reshape_count_mismatch,
    |g| err(x23(&g).reshape(&[4, 2])),
    Error::Reshape { .. },
    ["reshape", "reshape_", "[2, 3]", "[4, 2]", "errors.rs"]
);

bad!(
    reshape_two_inferred,
    |g| err(x234(&g).reshape(&[-1, 2, -1])),
    Error::Reshape { .. },
    ["reshape", "[2, 3, 4]", "-1", "errors.rs"]
);

bad!(
    reshape_negative_dim,
    |g| err(x23(&g).reshape(&[-2, -3])),
    Error::Reshape { .. },
    ["reshape", "errors.rs"]
);

bad!(
    reshape_indivisible_inferred,
    |g| err(x23(&g).reshape(&[4, -1])),
    Error::Reshape { .. },
    ["reshape", "[2, 3]", "errors.rs"]
);

// A target whose element count overflows usize must be an error, not an
// arithmetic-overflow panic (or, in release, a wrapped product that
// happens to match).
bad!(
    reshape_overflowing_dims,
    |g| {
        let x = g.input("x", DType::F32, [0]).expect("input");
        err(x.reshape(&[1 << 32, 1 << 32]))
    },
    Error::Reshape { .. },
    ["reshape", "errors.rs"]
);

bad!(
    permutation_wrong_length,
    |g| err(x234(&g).permute(&[1, 0])),
    Error::Permutation { .. },
    ["permute", "permute_", "[1, 0]", "[2, 3, 4]", "errors.rs"]
);

bad!(
    permutation_repeated_axis,
    |g| err(x234(&g).permute(&[0, 0, 1])),
    Error::Permutation { .. },
    ["permute", "[0, 0, 1]", "errors.rs"]
);

bad!(
    permutation_transpose_bad_axis,
    |g| err(x23(&g).transpose(0, 5)),
    Error::Permutation { .. },
    ["permute", "[2, 3]", "errors.rs"]
);

bad!(
    broadcast_to_incompatible,
    |g| err(x23(&g).broadcast_to([2, 4])),
    Error::BroadcastTo { .. },
    [
        "broadcast_to",
        "broadcast_to_",
        "[2, 3]",
        "[2, 4]",
        "errors.rs"
    ]
);

bad!(
    broadcast_to_lower_rank,
    |g| err(x23(&g).broadcast_to([3])),
    Error::BroadcastTo { .. },
    ["broadcast_to", "[2, 3]", "[3]", "errors.rs"]
);

bad!(
    slice_step_zero,
    |g| err(x23(&g).slice_step(1, 0, 3, 0)),
    Error::Slice { .. },
    ["slice", "slice_", "[2, 3]", "step", "errors.rs"]
);

bad!(
    slice_step_negative,
    |g| err(x23(&g).slice_step(1, 3, 0, -1)),
    Error::Slice { .. },
    ["slice", "[2, 3]", "errors.rs"]
);

bad!(
    slice_bad_axis,
    |g| err(x23(&g).slice(2, 0, 1)),
    Error::Slice { axis: 2, .. },
    ["slice", "[2, 3]", "axis 2", "errors.rs"]
);

bad!(
    concat_dim_mismatch,
    |g| {
        let b = g.input("b", DType::F32, [2, 4]).expect("input");
        let c = g.input("c", DType::F32, [3, 3]).expect("input");
        err(g.concat(&[&x23(&g), &b, &c], 0))
    },
    Error::Concat { .. },
    ["concat", "concat_", "[2, 3]", "[2, 4]", "errors.rs"]
);

bad!(
    concat_empty_list,
    |g| err(g.concat(&[], 0)),
    Error::Concat { .. },
    ["concat", "errors.rs"]
);

bad!(
    concat_dtype_mismatch,
    |g| {
        let b = g.input("b", DType::I32, [2, 3]).expect("input");
        err(g.concat(&[&x23(&g), &b], 1))
    },
    Error::Concat { .. },
    ["concat", "f32", "i32", "errors.rs"]
);

bad!(
    concat_rank_mismatch,
    |g| {
        let b = g.input("b", DType::F32, [3]).expect("input");
        err(g.concat(&[&x23(&g), &b], 0))
    },
    Error::Concat { .. },
    ["concat", "[2, 3]", "[3]", "errors.rs"]
);

bad!(
    concat_bad_axis,
    |g| err(g.concat(&[&x23(&g), &x23_b(&g)], 2)),
    Error::Concat { axis: 2, .. },
    ["concat", "errors.rs"]
);

fn x23_b(g: &Graph) -> Tensor {
    g.input("x_b", DType::F32, [2, 3]).expect("input")
}

bad!(
    split_indivisible,
    |g| err(x23(&g).split(1, SplitSpec::Parts(2))),
    Error::Split { .. },
    ["split", "split_", "[2, 3]", "errors.rs"]
);

bad!(
    split_sizes_do_not_sum,
    |g| err(x23(&g).split(1, SplitSpec::Sizes(vec![1, 1]))),
    Error::Split { .. },
    ["split", "[2, 3]", "[1, 1]", "errors.rs"]
);

bad!(
    split_zero_parts,
    |g| err(x23(&g).split(0, SplitSpec::Parts(0))),
    Error::Split { .. },
    ["split", "errors.rs"]
);

bad!(
    split_bad_axis,
    |g| err(x23(&g).split(-3, SplitSpec::Parts(1))),
    Error::Split { axis: -3, .. },
    ["split", "errors.rs"]
);

bad!(
    empty_reduction_max,
    |g| {
        let x = g.input("x", DType::F32, [3, 0]).expect("input");
        err(x.max(&[1], false))
    },
    Error::EmptyReduction { .. },
    ["max", "max_", "[3, 0]", "errors.rs"]
);

bad!(
    empty_reduction_min_all_axes,
    |g| {
        let x = g.input("x", DType::I32, [0, 2]).expect("input");
        err(x.min(&[], true))
    },
    Error::EmptyReduction { .. },
    ["min", "[0, 2]", "errors.rs"]
);

bad!(
    foreign_tensor,
    |g| {
        let other = Graph::new();
        let b = other
            .input("from_other", DType::F32, [2, 3])
            .expect("input");
        err(x23(&g).add(&b))
    },
    Error::ForeignTensor { .. },
    ["add", "from_other", "another graph", "errors.rs"]
);

bad!(
    foreign_tensor_in_concat,
    |g| {
        let other = Graph::new();
        let b = other
            .input("from_other", DType::F32, [2, 3])
            .expect("input");
        err(g.concat(&[&x23(&g), &b], 0))
    },
    Error::ForeignTensor { .. },
    ["concat", "from_other", "errors.rs"]
);

bad!(
    duplicate_input,
    |g| {
        let _x = x23(&g);
        err(g.input("x", DType::F32, [1]))
    },
    Error::DuplicateInput { .. },
    ["input", "`x`", "errors.rs"]
);

// --- compile errors ---

bad!(
    no_outputs,
    |g| {
        let _x = x23(&g);
        err(g.compile(&[], &cpu()))
    },
    Error::NoOutputs,
    ["no outputs"]
);

bad!(
    foreign_output,
    |g| {
        let _x = x23(&g);
        let other = Graph::new();
        let t = other.input("elsewhere", DType::F32, [1]).expect("input");
        err(g.compile(&[&t], &cpu()))
    },
    Error::ForeignOutput { .. },
    ["elsewhere", "another graph"]
);

bad!(
    device_unavailable_without_gpu_backend,
    |g| {
        let x = x23(&g);
        // Options naming the GPU but holding only the CPU backend: always
        // unavailable, whatever this machine has.
        let options = CompileOptions::new(Device::Gpu, vec![tensorgraph::cpu_backend()]);
        assert!(matches!(
            options.resolve(),
            Err(Error::DeviceUnavailable {
                device: Device::Gpu,
                ..
            })
        ));
        err(g.compile(&[&x], &options))
    },
    Error::DeviceUnavailable {
        device: Device::Gpu,
        ..
    },
    ["Gpu", "not available"]
);

/// `options(Device::Gpu)` fails with `DeviceUnavailable` exactly when this
/// machine has no GPU.
#[test]
fn device_unavailable_when_no_gpu() {
    match tensorgraph::options(Device::Gpu) {
        Ok(options) => {
            let backend = options.resolve().expect("GPU options resolve");
            assert_eq!(backend.device(), Device::Gpu);
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::DeviceUnavailable {
                        device: Device::Gpu,
                        ..
                    }
                ),
                "{e:?}"
            );
            let (device, _) = tensorgraph::resolve(Device::Auto).expect("auto falls back");
            assert_eq!(device, Device::Cpu, "auto without a GPU");
        }
    }
}

// --- run errors ---

/// A compiled `x + 1` over `x: f32[2, 3]`, with an unused input `u`.
fn plus_one(g: &Graph) -> tensorgraph::Plan {
    let x = x23(g);
    let _u = g.input("u", DType::F32, [1]).expect("input");
    g.compile(&[&(&x + 1.0)], &cpu()).expect("compile")
}

fn feed23() -> Value {
    Value::F32(f32_arr(&[2, 3]))
}

bad!(
    missing_feed,
    |g| err(plus_one(&g).run(&[])),
    Error::MissingFeed { .. },
    ["`x`", "f32[2, 3]", "not fed"]
);

bad!(
    unknown_feed,
    |g| err(plus_one(&g).run(&[("x", feed23()), ("nope", feed23())])),
    Error::UnknownFeed { .. },
    ["`nope`", "x", "u"]
);

bad!(
    duplicate_feed,
    |g| err(plus_one(&g).run(&[("x", feed23()), ("x", feed23())])),
    Error::DuplicateFeed { .. },
    ["`x`", "twice"]
);

bad!(
    feed_wrong_shape,
    |g| err(plus_one(&g).run(&[("x", Value::F32(f32_arr(&[3, 2])))])),
    Error::FeedMismatch { .. },
    ["`x`", "f32[2, 3]", "f32[3, 2]"]
);

bad!(
    feed_wrong_dtype,
    |g| {
        let v = Value::I32(ArrayD::zeros(IxDyn(&[2, 3])));
        err(plus_one(&g).run(&[("x", v)]))
    },
    Error::FeedMismatch { .. },
    ["`x`", "f32[2, 3]", "i32[2, 3]"]
);

bad!(
    value_dtype_into_f32,
    |_g| err(Value::I32(ArrayD::zeros(IxDyn(&[2]))).into_f32()),
    Error::ValueDType {
        expected: DType::F32,
        found: DType::I32
    },
    ["i32", "f32"]
);

bad!(
    value_dtype_into_i32,
    |_g| err(Value::from(1.5f32).into_i32()),
    Error::ValueDType {
        expected: DType::I32,
        found: DType::F32
    },
    ["f32", "i32"]
);

/// A failed run leaves the plan usable.
#[test]
fn plan_runs_after_a_failed_run() {
    let g = Graph::new();
    let plan = plus_one(&g);
    assert!(matches!(plan.run(&[]), Err(Error::MissingFeed { .. })));
    let out = plan.run(&[("x", feed23())]).expect("run");
    let got = f32_of(out.into_iter().next().expect("one output"));
    assert_close(
        &got,
        &f32_arr(&[2, 3]).mapv(|v| v + 1.0),
        0.0,
        0.0,
        "x + 1 after a failed run",
    );
}

// --- messages ---

/// A user-given name appears in errors of nodes built from it, and the
/// location is the line that built the failing node.
#[test]
fn messages_name_operands_and_the_building_line() {
    let g = Graph::new();
    let x = x23(&g).relu().expect("relu").named("hidden");
    let other = Graph::new();
    let foreign = other
        .input("w", DType::F32, [3])
        .expect("input")
        .named("weights");
    let line = line!() + 1;
    let e = err(foreign.add(&x));
    assert!(matches!(e, Error::ForeignTensor { .. }), "{e:?}");
    says(&e, &["`hidden`", &format!("errors.rs:{line}")]);
    let line = line!() + 1;
    let e = err(x.matmul(&x));
    says(&e, &["matmul", "[2, 3]", &format!("errors.rs:{line}")]);
    graph_still_works(&g, "messages");
}

// --- operator overloads panic with the Result method's message ---

fn panic_message(f: impl FnOnce() -> Tensor) -> String {
    let payload = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(t) => panic!("expected a panic, built {}", t.name()),
        Err(p) => p,
    };
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        panic!("panic payload is not a string")
    }
}

/// Removes `:LINE` after `errors.rs` so messages built on different lines
/// compare equal.
fn without_line(msg: &str) -> String {
    match msg.find("errors.rs:") {
        Some(at) => {
            let rest = &msg[at + "errors.rs:".len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            format!("{}errors.rs:{}", &msg[..at], &rest[digits..])
        }
        None => msg.to_string(),
    }
}

#[test]
fn overloads_panic_with_the_result_message() {
    let g = Graph::new();
    let a = x23(&g);
    let b = g.input("b", DType::F32, [4]).expect("input");
    let bi = g.input("bi", DType::I32, [2, 3]).expect("input");
    type Pair<'a> = (
        fn(&Tensor, &Tensor) -> tensorgraph::Result<Tensor>,
        fn(&Tensor, &Tensor) -> Tensor,
        &'a Tensor,
    );
    let table: [(&str, Pair<'_>); 5] = [
        // Closures, not `Tensor::add` as a fn pointer: a call through a
        // pointer loses `#[track_caller]`'s location.
        ("add", (|x, y| x.add(y), |x, y| x + y, &b)),
        ("sub", (|x, y| x.sub(y), |x, y| x - y, &b)),
        ("mul", (|x, y| x.mul(y), |x, y| x * y, &bi)),
        ("div", (|x, y| x.div(y), |x, y| x / y, &bi)),
        (
            "add owned",
            (|x, y| x.add(y), |x, y| x.clone() + y.clone(), &b),
        ),
    ];
    for (name, (method, overload, rhs)) in table {
        let expected = err(method(&a, rhs)).to_string();
        let got = panic_message(|| overload(&a, rhs));
        assert!(
            got.contains("errors.rs"),
            "{name}: panic should point at this file: {got}"
        );
        assert_eq!(
            without_line(&got),
            without_line(&expected),
            "{name}: overload vs method"
        );
    }
    // On one line the two messages are identical, location included.
    #[rustfmt::skip]
    let (r, p) = (a.add(&b).map(|t| t.name()), panic_message(|| &a + &b));
    assert_eq!(p, err(r).to_string());
    graph_still_works(&g, "overloads");
}
