//! CPU-only: every WGSL file, expanded for every dtype and op variant the
//! backend builds, and generated fused kernels, matmul epilogues and
//! reduction prologues for a representative set of programs, parse and
//! validate with naga, with no placeholder left.

use std::sync::Arc;

use naga::valid::{Capabilities, ValidationFlags, Validator};
use tensorgraph_core::{BinaryOp, DType, FusedExpr, Instr, ReduceOp, Scalar, TensorType, UnaryOp};
use tensorgraph_wgpu::epilogue::MatMulProgram;
use tensorgraph_wgpu::fused::FusedProgram;
use tensorgraph_wgpu::shaders::{self, Shader};

fn validate(label: &str, source: &str) {
    assert!(
        !source.contains("{{"),
        "{label}: placeholder survived expansion"
    );
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{label}: parse error\n{}", e.emit_to_string(source)));
    Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: invalid\n{}", e.emit_to_string(source)));
}

#[test]
fn every_shader_variant_validates() {
    let variants = shaders::all_variants();
    let mut files = std::collections::HashSet::new();
    for key in &variants {
        let src = key.source().unwrap_or_else(|e| panic!("{e}"));
        validate(&key.label(), &src);
        files.insert(key.shader);
    }
    // Every shader file is exercised by at least one variant.
    for shader in Shader::ALL {
        assert!(files.contains(&shader), "{} has no variant", shader.file());
    }
}

#[test]
fn every_shader_file_documents_its_bindings() {
    for shader in Shader::ALL {
        let src = shader.source();
        assert!(
            src.starts_with("//"),
            "{} must open with a comment",
            shader.file()
        );
        let header: String = src.lines().take_while(|l| l.starts_with("//")).collect();
        assert!(
            header.contains("Bindings"),
            "{}: header lists no bindings",
            shader.file()
        );
        assert!(
            header.contains("struct Params"),
            "{}: header shows no params struct",
            shader.file()
        );
    }
}

#[test]
fn a_broken_shader_is_caught() {
    let bad =
        shaders::expand("fn main() { let x: f32 = {{V}}; }", &[("V", "1u")]).expect("expands");
    assert!(
        naga::front::wgsl::parse_str(&bad)
            .map_err(|e| e.to_string())
            .and_then(
                |m| Validator::new(ValidationFlags::all(), Capabilities::default())
                    .validate(&m)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            )
            .is_err()
    );
}

/// `dims` of `dtype`.
fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, dims.to_vec())
}

/// A program from `(instr, dtype)` pairs.
fn program(steps: &[(Instr, DType)]) -> Arc<FusedExpr> {
    Arc::new(FusedExpr {
        instrs: steps.iter().map(|s| s.0).collect(),
        dtypes: steps.iter().map(|s| s.1).collect(),
    })
}

/// Operand layouts for `k` operands of `dtype`, output `[4, 8]`: every
/// operand whole (the flat form), and a mix of whole, single-element and
/// broadcast operands (the strided form).
fn layouts(dtype: DType, k: usize) -> Vec<(Vec<TensorType>, TensorType)> {
    let out = ty(dtype, &[4, 8]);
    let mixed = [&[4, 8][..], &[], &[4, 1], &[8], &[1, 1], &[1, 8]];
    vec![
        (vec![out.clone(); k], out.clone()),
        (
            (0..k).map(|j| ty(dtype, mixed[(j + 2) % 6])).collect(),
            out.clone(),
        ),
    ]
}

/// A representative set of fused programs: every unary and binary op on
/// both dtypes, casts both ways, literals (non-finite and extreme ones
/// too), literal-only programs, 1 to 6 operands, an unused operand.
fn fused_cases() -> Vec<(String, Arc<FusedExpr>, Vec<TensorType>, TensorType)> {
    use DType::{F32, I32};
    let mut cases = Vec::new();
    let mut add = |name: String, expr: Arc<FusedExpr>, k: usize, dtype: DType, out: DType| {
        for (mut ins, o) in layouts(dtype, k) {
            for (j, t) in ins.iter_mut().enumerate() {
                // Operand 1 of a cast program is the other dtype.
                if j == 1 && out != dtype {
                    *t = ty(out, t.shape.dims());
                }
            }
            cases.push((name.clone(), expr.clone(), ins, ty(out, o.shape.dims())));
        }
    };
    for d in [F32, I32] {
        for u in UnaryOp::ALL {
            if d == I32 && u.float_only() {
                continue;
            }
            let e = program(&[(Instr::Input(0), d), (Instr::Unary(u, 0), d)]);
            add(format!("{} {d}", u.name()), e, 1, d, d);
        }
        for b in BinaryOp::ALL {
            let e = program(&[
                (Instr::Input(0), d),
                (Instr::Input(1), d),
                (Instr::Binary(b, 0, 1), d),
            ]);
            add(format!("{} {d}", b.name()), e, 2, d, d);
        }
    }
    // Casts both ways and to the same type, mixing operand dtypes.
    let e = program(&[
        (Instr::Input(0), F32),
        (Instr::Cast(I32, 0), I32),
        (Instr::Input(1), I32),
        (Instr::Binary(BinaryOp::Add, 1, 2), I32),
        (Instr::Cast(I32, 3), I32),
    ]);
    add("cast f32 -> i32".into(), e, 2, F32, I32);
    let e = program(&[
        (Instr::Input(0), I32),
        (Instr::Cast(F32, 0), F32),
        (Instr::Input(1), F32),
        (Instr::Binary(BinaryOp::Pow, 1, 2), F32),
        (Instr::Cast(F32, 3), F32),
    ]);
    add("cast i32 -> f32".into(), e, 2, I32, F32);
    // Literals, including ones naga would refuse to fold.
    for x in [1.5f32, -0.0, f32::NAN, f32::INFINITY, -f32::INFINITY, 1e-40] {
        let e = program(&[
            (Instr::Input(0), F32),
            (Instr::Scalar(Scalar::F32(x)), F32),
            (Instr::Binary(BinaryOp::Div, 0, 1), F32),
        ]);
        add(format!("literal {x:?}"), e, 1, F32, F32);
    }
    let e = program(&[
        (Instr::Scalar(Scalar::I32(i32::MAX)), I32),
        (Instr::Scalar(Scalar::I32(1)), I32),
        (Instr::Binary(BinaryOp::Add, 0, 1), I32),
        (Instr::Scalar(Scalar::I32(0)), I32),
        (Instr::Binary(BinaryOp::Div, 2, 3), I32),
    ]);
    add("literals only, overflowing".into(), e, 0, I32, I32);
    let e = program(&[
        (Instr::Scalar(Scalar::F32(1.0)), F32),
        (Instr::Scalar(Scalar::F32(0.0)), F32),
        (Instr::Binary(BinaryOp::Div, 0, 1), F32),
    ]);
    add("literals only, 1 / 0".into(), e, 3, F32, F32);
    // 1 to 6 operands, each used, alternating ops, less operand 0.
    for k in 1..=6 {
        for d in [F32, I32] {
            let mut steps = vec![(Instr::Input(0), d)];
            for j in 1..k {
                steps.push((Instr::Input(j), d));
                let op = [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Max][j % 3];
                steps.push((Instr::Binary(op, steps.len() - 2, steps.len() - 1), d));
            }
            steps.push((Instr::Binary(BinaryOp::Sub, steps.len() - 1, 0), d));
            add(format!("{k} operands {d}"), program(&steps), k, d, d);
        }
    }
    cases
}

#[test]
fn every_fused_case_validates() {
    let cases = fused_cases();
    assert!(cases.len() > 80, "{} cases", cases.len());
    let mut forms = std::collections::HashSet::new();
    for (name, expr, ins, out) in &cases {
        let p = FusedProgram::new(expr, ins, out).unwrap_or_else(|e| panic!("{name}: {e}"));
        forms.insert(p.flat());
        let key = p.shader_key();
        let src = key.source().unwrap_or_else(|e| panic!("{name}: {e}"));
        validate(&format!("{name} {ins:?}: {}", key.label()), &src);
        assert!(!src.contains("}}"), "{name}: stray braces");
    }
    assert_eq!(forms.len(), 2, "both the flat and the strided form");
}

#[test]
fn fused_keys_tell_programs_and_layouts_apart() {
    let cases = fused_cases();
    let keys: std::collections::HashSet<_> = cases
        .iter()
        .map(|(_, e, ins, out)| FusedProgram::new(e, ins, out).expect("valid").shader_key())
        .collect();
    // Only the two literal-only programs repeat: their layouts read nothing.
    assert_eq!(keys.len(), cases.len() - 2);
}

#[test]
fn malformed_fused_programs_are_refused() {
    use DType::{F32, I32};
    let x = [ty(F32, &[4])];
    let bad = [
        // exp on i32.
        (
            program(&[(Instr::Input(0), I32), (Instr::Unary(UnaryOp::Exp, 0), I32)]),
            vec![ty(I32, &[4])],
            "not defined",
        ),
        // A forward reference.
        (
            program(&[(Instr::Unary(UnaryOp::Neg, 1), F32), (Instr::Input(0), F32)]),
            x.to_vec(),
            "earlier",
        ),
        // Operand 1 does not exist.
        (program(&[(Instr::Input(1), F32)]), x.to_vec(), "operand 1"),
        // Mixed dtypes without a cast.
        (
            program(&[
                (Instr::Input(0), F32),
                (Instr::Scalar(Scalar::I32(1)), I32),
                (Instr::Binary(BinaryOp::Add, 0, 1), F32),
            ]),
            x.to_vec(),
            "add of f32 and i32",
        ),
        // An operand that does not broadcast to the output.
        (
            program(&[(Instr::Input(0), F32)]),
            vec![ty(F32, &[5])],
            "broadcast",
        ),
    ];
    for (expr, ins, want) in bad {
        let err = FusedProgram::new(&expr, &ins, &ty(F32, &[4])).expect_err(want);
        assert!(err.contains(want), "{err} (wanted {want})");
    }
}

/// Every fused case again, in place into each operand of the output's
/// exact type: the donor is bound once, as the `read_write` output, never
/// also read-only; the shader validates; the key tells it apart.
#[test]
fn every_fused_case_validates_in_place() {
    let mut forms = std::collections::HashSet::new();
    let mut unused_donor = false;
    let mut keys = std::collections::HashSet::new();
    for (name, expr, ins, out) in &fused_cases() {
        let plain = FusedProgram::new(expr, ins, out).expect("valid");
        for k in (0..ins.len()).filter(|&k| ins[k] == *out) {
            let p = plain
                .clone()
                .in_place(k)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.in_place_operand(), Some(k));
            assert_ne!(
                p.key_text(),
                plain.key_text(),
                "{name}: in place keyed apart"
            );
            let read = plain.binds(k);
            unused_donor |= !read;
            assert_eq!(
                p.storage_buffers(),
                plain.storage_buffers() - usize::from(read),
                "{name}: the donor shares the output's binding"
            );
            forms.insert(p.flat());
            let storage = p.storage_buffers();
            let key = p.shader_key();
            keys.insert(key.clone());
            let src = key.source().unwrap_or_else(|e| panic!("{name}: {e}"));
            let label = format!("{name} {ins:?} in place x{k}: {}", key.label());
            validate(&label, &src);
            assert!(
                !src.contains(&format!(" x{k}: ")),
                "{label}: the donor has a binding of its own\n{src}"
            );
            assert_eq!(
                src.matches("var<storage, read_write>").count(),
                1,
                "{label}"
            );
            assert_eq!(src.matches("var<storage").count(), storage, "{label}");
        }
    }
    assert_eq!(forms.len(), 2, "both forms in place");
    assert!(unused_donor, "an in-place operand the program never reads");
    assert!(keys.len() > 60, "{} in-place keys", keys.len());
}

#[test]
fn in_place_needs_an_operand_of_the_output_type() {
    use DType::{F32, I32};
    let add = program(&[
        (Instr::Input(0), F32),
        (Instr::Input(1), F32),
        (Instr::Binary(BinaryOp::Add, 0, 1), F32),
    ]);
    let out = ty(F32, &[4, 8]);
    let p = FusedProgram::new(&add, &[ty(F32, &[8]), out.clone()], &out).expect("valid");
    let err = p.clone().in_place(0).expect_err("broadcast operand");
    assert!(err.contains("operand 0"), "{err}");
    assert!(p.clone().in_place(2).is_err(), "no operand 2");
    let twice = p.in_place(1).expect("whole operand").in_place(1);
    assert!(twice.is_err(), "in place once");
    let cast = program(&[(Instr::Input(0), I32), (Instr::Cast(F32, 0), F32)]);
    let p = FusedProgram::new(&cast, &[ty(I32, &[4, 8])], &out).expect("valid");
    assert!(
        p.in_place(0).is_err(),
        "an i32 buffer cannot hold f32 in place"
    );
}

/// Every fused case as a matmul epilogue (operand 0 the product of a
/// `[4, 3] x [3, 8]` matmul of operand 0's dtype, the rest 0 to 5 extra
/// operands, whole, single or broadcast), with and without the `vec4`
/// views: each validates, with one storage binding per operand it binds.
#[test]
fn every_epilogue_case_validates() {
    let mut extras = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for (name, expr, ins, out) in &fused_cases() {
        let acc = ins.first().map_or(out.dtype, |t| t.dtype);
        let mut kernel = vec![ty(acc, &[4, 3]), ty(acc, &[3, 8])];
        kernel.extend(ins.iter().skip(1).cloned());
        extras.insert(kernel.len() - 2);
        let p =
            MatMulProgram::epilogue(expr, &kernel, out).unwrap_or_else(|e| panic!("{name}: {e}"));
        for views in [true, false] {
            let p = p.clone().with_views(views);
            let storage = p.storage_buffers();
            let key = p.shader_key();
            keys.insert(key.clone());
            let src = key.source().unwrap_or_else(|e| panic!("{name}: {e}"));
            let label = format!("{name} {kernel:?} views {views}: {}", key.label());
            validate(&label, &src);
            assert!(!src.contains("}}"), "{label}: stray braces");
            assert_eq!(src.matches("var<storage").count(), storage, "{label}");
            assert!(src.contains("c[o] = eval("), "{label}: no epilogue store");
        }
    }
    assert_eq!(extras, (0..=5).collect(), "0 to 5 extra operands");
    assert!(keys.len() >= 140, "{} epilogue keys", keys.len());
    for d in [DType::F32, DType::I32] {
        validate(
            &format!("plain matmul {d}"),
            &shaders::matmul(d).source().expect("expands"),
        );
    }
}

/// Every fused case as the prologue of each reduction, over the operand
/// layouts of `fused_cases` (whole, single, broadcast, unused operands).
#[test]
fn every_prologue_case_validates() {
    let mut keys = std::collections::HashSet::new();
    for (name, expr, ins, out) in &fused_cases() {
        for op in ReduceOp::ALL {
            let p = FusedProgram::new(expr, ins, out).unwrap_or_else(|e| panic!("{name}: {e}"));
            let storage = p.storage_buffers();
            for wg in shaders::REDUCE_WGS {
                let key = shaders::reduce(op, p.clone(), wg);
                keys.insert(key.clone());
                let src = key.source().unwrap_or_else(|e| panic!("{name}: {e}"));
                let label = format!("{name} {ins:?} {}: {}", op.name(), key.label());
                validate(&label, &src);
                assert!(!src.contains("}}"), "{label}: stray braces");
                assert_eq!(src.matches("var<storage").count(), storage, "{label}");
            }
        }
    }
    assert!(keys.len() > 600, "{} prologue keys", keys.len());
}

#[test]
fn malformed_epilogues_are_refused() {
    use DType::{F32, I32};
    let relu = program(&[
        (Instr::Input(0), F32),
        (Instr::Unary(UnaryOp::Relu, 0), F32),
    ]);
    let out = ty(F32, &[4, 8]);
    let ab = [ty(F32, &[4, 3]), ty(F32, &[3, 8])];
    assert!(MatMulProgram::epilogue(&relu, &ab, &out).is_ok());
    let err = MatMulProgram::epilogue(&relu, &ab[..1], &out).expect_err("one operand");
    assert!(err.contains("two matmul operands"), "{err}");
    let err = MatMulProgram::epilogue(&relu, &[ty(F32, &[4, 3]), ty(I32, &[3, 8])], &out)
        .expect_err("mixed dtypes");
    assert!(err.contains("dtypes differ"), "{err}");
    let add = program(&[
        (Instr::Input(0), F32),
        (Instr::Input(1), F32),
        (Instr::Binary(BinaryOp::Add, 0, 1), F32),
    ]);
    let err = MatMulProgram::epilogue(&add, &ab, &out).expect_err("no extra operand");
    assert!(err.contains("operand 1"), "{err}");
    let mut bad = ab.to_vec();
    bad.push(ty(F32, &[5]));
    let err = MatMulProgram::epilogue(&add, &bad, &out).expect_err("does not broadcast");
    assert!(err.contains("broadcast"), "{err}");
}
