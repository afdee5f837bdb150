//! WGSL generation for fused elementwise programs ([`Op::Fused`]): one
//! shader per distinct program and operand layout, framed by
//! `shaders/fused.wgsl` and built from the same per-op expressions as the
//! unary, binary and cast shaders.
//!
//! [`Op::Fused`]: tensorgraph_core::Op::Fused

use std::fmt::Write as _;
use std::sync::Arc;

use tensorgraph_core::{DType, FusedExpr, Instr, Scalar, TensorType};

use crate::shaders::{self, Generated, Shader, ShaderKey, wgsl_type};

/// How a fused kernel reads one of its operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The output's own shape: element `i` (a `vec4` in the flat form).
    Full,
    /// One element, broadcast everywhere: element 0.
    Single,
    /// Broadcast along some axes: strides walked per element.
    Strided,
    /// Never read by the program: not bound.
    Unused,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Access::Full => 'F',
            Access::Single => 'S',
            Access::Strided => 'B',
            Access::Unused => '-',
        }
    }
}

/// A fused program specialised to its operand layout: what one compute
/// pipeline computes.
#[derive(Debug, Clone)]
pub struct FusedProgram {
    expr: Arc<FusedExpr>,
    operands: Vec<DType>,
    access: Vec<Access>,
    out: DType,
    /// The operand whose buffer is also the output's (bound once,
    /// `read_write`), if the kernel runs in place.
    in_place: Option<usize>,
    key: String,
}

/// Why `expr` is not a well-formed program over `inputs` producing
/// `output`, if it is not: operand references, dtypes, op definitions and
/// broadcasting are all checked.
pub fn check(expr: &FusedExpr, inputs: &[TensorType], output: &TensorType) -> Result<(), String> {
    let bad = |i: usize, why: String| Err(format!("fused instruction %{i}: {why}"));
    if expr.instrs.is_empty() || expr.instrs.len() != expr.dtypes.len() {
        return Err(format!(
            "fused program has {} instructions and {} dtypes",
            expr.instrs.len(),
            expr.dtypes.len()
        ));
    }
    for (i, (instr, &dt)) in expr.instrs.iter().zip(&expr.dtypes).enumerate() {
        let arg = |a: usize| {
            if a < i {
                Ok(expr.dtypes[a])
            } else {
                Err(format!(
                    "fused instruction %{i} reads %{a}, not an earlier one"
                ))
            }
        };
        match *instr {
            Instr::Input(k) => match inputs.get(k) {
                None => return bad(i, format!("reads operand {k} of {}", inputs.len())),
                Some(t) if t.dtype != dt => {
                    return bad(i, format!("operand {k} is {}, not {dt}", t.dtype));
                }
                Some(_) => {}
            },
            Instr::Scalar(s) if s.dtype() != dt => {
                return bad(i, format!("a {} literal typed {dt}", s.dtype()));
            }
            Instr::Scalar(_) => {}
            Instr::Unary(op, a) => {
                if arg(a)? != dt {
                    return bad(i, format!("{} of {} typed {dt}", op.name(), arg(a)?));
                }
                if shaders::unary_expr(op, dt).is_none() {
                    return bad(i, format!("{} is not defined for {dt}", op.name()));
                }
            }
            Instr::Binary(op, a, b) => {
                if arg(a)? != dt || arg(b)? != dt {
                    return bad(
                        i,
                        format!("{} of {} and {} typed {dt}", op.name(), arg(a)?, arg(b)?),
                    );
                }
            }
            Instr::Cast(to, a) => {
                arg(a)?;
                if to != dt {
                    return bad(i, format!("a cast to {to} typed {dt}"));
                }
            }
        }
    }
    let last = expr.dtypes[expr.dtypes.len() - 1];
    if last != output.dtype {
        return Err(format!(
            "fused program yields {last} but its output is {output}"
        ));
    }
    for (k, t) in inputs.iter().enumerate() {
        if !t.shape.broadcasts_to(&output.shape) {
            return Err(format!(
                "fused operand {k} ({t}) does not broadcast to the output {output}"
            ));
        }
    }
    Ok(())
}

impl FusedProgram {
    /// The program `expr` over operands of types `inputs`, producing
    /// `output`; an error says why it is malformed.
    pub fn new(
        expr: &Arc<FusedExpr>,
        inputs: &[TensorType],
        output: &TensorType,
    ) -> Result<Self, String> {
        check(expr, inputs, output)?;
        let n = output.shape.numel();
        let read: Vec<bool> = (0..inputs.len())
            .map(|k| expr.instrs.contains(&Instr::Input(k)))
            .collect();
        let access: Vec<Access> = inputs
            .iter()
            .zip(&read)
            .map(|(t, &read)| match t.shape.numel() {
                _ if !read => Access::Unused,
                m if m == n => Access::Full,
                1 => Access::Single,
                _ => Access::Strided,
            })
            .collect();
        let operands: Vec<DType> = inputs.iter().map(|t| t.dtype).collect();
        let mut key = format!("{expr} |");
        for (d, a) in operands.iter().zip(&access) {
            let _ = write!(key, " {d}:{}", a.letter());
        }
        let _ = write!(key, " -> {}", output.dtype);
        Ok(FusedProgram {
            expr: expr.clone(),
            operands,
            access,
            out: output.dtype,
            in_place: None,
            key,
        })
    }

    /// The same program writing its result into operand `k`'s buffer: that
    /// operand is not bound on its own but read from the output binding
    /// (WebGPU forbids binding one buffer read-only and writable in one
    /// dispatch). `k` must be read whole and of the output's dtype, or not
    /// read at all.
    pub fn in_place(mut self, k: usize) -> Result<Self, String> {
        match (self.access.get(k), self.operands.get(k)) {
            (None, _) | (_, None) => {
                return Err(format!(
                    "in place into operand {k} of {}",
                    self.access.len()
                ));
            }
            (Some(Access::Full | Access::Unused), Some(&d)) if d == self.out => {}
            (Some(&a), Some(&d)) => {
                return Err(format!(
                    "fused operand {k} ({d}, read {a:?}) cannot hold the {} result in place",
                    self.out
                ));
            }
        }
        if let Some(j) = self.in_place {
            return Err(format!("fused kernel already runs in place in operand {j}"));
        }
        let _ = write!(self.key, " in place x{k}");
        self.in_place = Some(k);
        Ok(self)
    }

    /// The operand whose buffer the result overwrites, if any.
    pub fn in_place_operand(&self) -> Option<usize> {
        self.in_place
    }

    /// Whether every operand is read whole or as one element: the flat,
    /// `vec4` form with no index math.
    pub fn flat(&self) -> bool {
        !self.access.contains(&Access::Strided)
    }

    /// How each operand is read.
    pub fn access(&self) -> &[Access] {
        &self.access
    }

    /// Storage buffers the kernel binds: each operand it reads, and the
    /// output (parameters are a uniform block); an in-place operand shares
    /// the output's binding.
    pub fn storage_buffers(&self) -> usize {
        self.access
            .iter()
            .enumerate()
            .filter(|&(k, a)| *a != Access::Unused && Some(k) != self.in_place)
            .count()
            + 1
    }

    /// Whether operand `k` gets a binding of its own.
    pub fn binds(&self, k: usize) -> bool {
        self.access.get(k).is_some_and(|a| *a != Access::Unused) && Some(k) != self.in_place
    }

    /// The canonical text the pipeline is cached by: the program, each
    /// operand's dtype and access, the output dtype, the in-place operand.
    pub fn key_text(&self) -> &str {
        &self.key
    }

    /// The pipeline key of this program.
    pub fn shader_key(self) -> ShaderKey {
        ShaderKey::generated(
            Shader::Fused,
            self.key.clone(),
            Generated::Fused(Arc::new(self)),
        )
    }

    /// The values of `fused.wgsl`'s placeholders.
    pub(crate) fn template_args(&self) -> Result<Vec<(&'static str, String)>, String> {
        let flat = self.flat();
        let mut fields = String::new();
        let mut bindings = String::new();
        let mut args = Vec::new();
        let mut call = Vec::new();
        let mut main = String::new();
        let mut walk = String::new();
        let mut slot = 0;
        if !flat {
            fields.push_str("    shape: array<vec4<u32>, 2>,\n");
        }
        for (k, (&d, &a)) in self.operands.iter().zip(&self.access).enumerate() {
            let t = wgsl_type(d);
            let elem = match a {
                Access::Unused => continue,
                Access::Full if flat => format!("vec4<{t}>"),
                Access::Full | Access::Single | Access::Strided => t.to_string(),
            };
            args.push(format!("a{k}: {t}"));
            if Some(k) == self.in_place {
                // Read from the output's binding, element i, before the
                // same thread overwrites it.
                if flat {
                    let _ = writeln!(main, "    let a{k} = z[i];");
                    call.push(format!("a{k}.LANE"));
                } else {
                    call.push("z[i]".to_string());
                }
                continue;
            }
            let _ = writeln!(
                bindings,
                "@group(0) @binding({slot}) var<storage, read> x{k}: array<{elem}>;"
            );
            slot += 1;
            match a {
                Access::Full if flat => {
                    let _ = writeln!(main, "    let a{k} = x{k}[i];");
                    call.push(format!("a{k}.LANE"));
                }
                Access::Full => call.push(format!("x{k}[i]")),
                Access::Single => call.push(format!("x{k}[0]")),
                Access::Strided => {
                    let _ = writeln!(fields, "    s{k}: array<vec4<u32>, 2>,");
                    let _ = writeln!(main, "    var o{k} = 0u;");
                    let _ = writeln!(walk, "        o{k} = o{k} + c * p.s{k}[k / 4u][k % 4u];");
                    call.push(format!("x{k}[o{k}]"));
                }
                Access::Unused => {}
            }
        }
        let out = wgsl_type(self.out);
        let eval = format!("eval({})", call.join(", "));
        if flat {
            let lanes: Vec<String> = ["x", "y", "z", "w"]
                .iter()
                .map(|l| eval.replace("LANE", l))
                .collect();
            let _ = writeln!(
                bindings,
                "@group(0) @binding({slot}) var<storage, read_write> z: array<vec4<{out}>>;"
            );
            let _ = write!(main, "    z[i] = vec4<{out}>({});", lanes.join(", "));
        } else {
            let _ = writeln!(
                bindings,
                "@group(0) @binding({slot}) var<storage, read_write> z: array<{out}>;"
            );
            let _ = write!(
                main,
                "    var rest = i;\n    \
                 for (var d = i32(p.rank) - 1; d >= 0; d = d - 1) {{\n        \
                 let k = u32(d);\n        \
                 let dim = p.shape[k / 4u][k % 4u];\n        \
                 let c = rest % dim;\n        \
                 rest = rest / dim;\n\
                 {walk}    }}\n    \
                 z[i] = {eval};"
            );
        }
        let (ops, body) = self.body()?;
        Ok(vec![
            ("FIELDS", fields),
            ("BINDINGS", bindings),
            ("PARAMS_BINDING", (slot + 1).to_string()),
            ("OPS", ops),
            ("ARGS", args.join(", ")),
            ("T", out.to_string()),
            ("BODY", body),
            ("MAIN", main),
        ])
    }

    /// The result's element type.
    pub fn out(&self) -> DType {
        self.out
    }

    /// The element type of each operand.
    pub fn operand_dtypes(&self) -> &[DType] {
        &self.operands
    }

    /// The wrapper function of each (op, dtype) used, and the whole
    /// `fn eval(a<k>: T_k, ..) -> T`, one argument per operand read in
    /// operand order: what frames other than `fused.wgsl` (the matmul
    /// epilogue, the reduction prologue) splice in.
    pub(crate) fn eval_fn(&self) -> Result<(String, String), String> {
        let args: Vec<String> = self
            .operands
            .iter()
            .zip(&self.access)
            .enumerate()
            .filter(|(_, (_, a))| **a != Access::Unused)
            .map(|(k, (&d, _))| format!("a{k}: {}", wgsl_type(d)))
            .collect();
        let (ops, body) = self.body()?;
        let f = format!(
            "fn eval({}) -> {} {{\n{body}\n}}",
            args.join(", "),
            wgsl_type(self.out)
        );
        Ok((ops, f))
    }

    /// The wrapper function of each (op, dtype) used, and `eval`'s body.
    fn body(&self) -> Result<(String, String), String> {
        let mut ops = String::new();
        let mut defined: Vec<String> = Vec::new();
        let mut define = |name: String, sig: String, expr: &str| {
            if !defined.contains(&name) {
                let _ = writeln!(ops, "fn {name}({sig} {{\n    return {expr};\n}}\n");
                defined.push(name.clone());
            }
            name
        };
        let dts = &self.expr.dtypes;
        let mut body = String::new();
        for (i, (instr, &dt)) in self.expr.instrs.iter().zip(dts).enumerate() {
            let t = wgsl_type(dt);
            let value = match *instr {
                Instr::Input(k) => format!("a{k}"),
                // Xor-ed with a run-time zero so naga never folds them.
                Instr::Scalar(Scalar::F32(x)) => {
                    format!("bitcast<f32>(0x{:08x}u ^ p.zero)", x.to_bits())
                }
                Instr::Scalar(Scalar::I32(x)) => {
                    format!("bitcast<i32>(0x{:08x}u ^ p.zero)", x as u32)
                }
                Instr::Unary(op, a) => {
                    let expr = shaders::unary_expr(op, dt)
                        .ok_or_else(|| format!("{} is not defined for {dt}", op.name()))?;
                    let f = define(
                        format!("u_{}_{t}", op.name()),
                        format!("v: {t}) -> {t}"),
                        expr,
                    );
                    format!("{f}(v{a})")
                }
                Instr::Binary(op, a, b) => {
                    let f = define(
                        format!("b_{}_{t}", op.name()),
                        format!("a: {t}, b: {t}) -> {t}"),
                        shaders::binary_expr(op, dt),
                    );
                    format!("{f}(v{a}, v{b})")
                }
                Instr::Cast(to, a) => {
                    let from = dts.get(a).copied().ok_or("cast of a missing value")?;
                    let src = wgsl_type(from);
                    let f = define(
                        format!("c_{src}_{t}"),
                        format!("v: {src}) -> {t}"),
                        shaders::cast_expr(from, to),
                    );
                    format!("{f}(v{a})")
                }
            };
            let _ = writeln!(body, "    let v{i}: {t} = {value};");
        }
        let _ = write!(body, "    return v{};", dts.len() - 1);
        Ok((ops, body))
    }
}
