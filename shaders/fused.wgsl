// fused.wgsl: generated elementwise programs (Op::Fused), one pass over
// memory for a whole chain of unary, binary and cast ops. The backend's
// fused.rs generates the program text for each distinct expression; this
// file is the frame around it.
//
// Bindings (group 0):
//   0..k-1  x0..: array<T_j> | array<vec4<T_j>>   read-only storage, the
//           operands the program reads, in operand order
//   k       z: array<T> | array<vec4<T>>          read_write storage, the result
//   k+1     p: Params                              uniform
// In place (one operand dies here with the result's exact type, and the
// result takes its buffer over): that operand gets no binding of its own,
// since WebGPU forbids one buffer bound read-only and writable in one
// dispatch; the program reads it from z, element i, before the same thread
// writes element i. Its key ends `in place x<j>`.
// struct Params {
//   n: u32,      // threads with work: elements, or vec4s in the flat form
//   rank: u32,   // axes of the collapsed output (strided form)
//   zero: u32,   // always 0: literals are xor-ed with it, so naga never
//                // folds them (a folded overflow or inf is a compile error)
//   _pad: u32,
//   // strided form only:
//   shape: array<vec4<u32>, 2>,   // collapsed output dims, outermost first
//   s<j>: array<vec4<u32>, 2>,    // element strides of each strided operand
// }
//
// Two forms. Flat: every operand is the output's shape (bound as vec4s) or
// a single element; each thread computes 4 neighbouring elements with no
// index math. Strided: some operand broadcasts along some axes; each
// thread computes one element and walks the collapsed axes once for every
// strided operand's offset.
//
// Template placeholders (named here without braces, since several expand
// to many lines): FIELDS the strided form's params fields; BINDINGS the
// storage declarations; PARAMS_BINDING the uniform's binding index; OPS one
// wrapper function per (op, dtype) used, each the very expression the
// unary/binary/cast shaders use, over math.wgsl (spliced in at HELPERS);
// ARGS, T and BODY the program as `eval`, one argument per operand; MAIN
// the form's body. Dispatch: ceil(n / 256) workgroups, folded into y past
// the per-dimension cap.

struct Params {
    n: u32,
    rank: u32,
    zero: u32,
    _pad: u32,
{{FIELDS}}
}

{{BINDINGS}}
@group(0) @binding({{PARAMS_BINDING}}) var<uniform> p: Params;

{{HELPERS}}

{{OPS}}

fn eval({{ARGS}}) -> {{T}} {
{{BODY}}
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n {
        return;
    }
{{MAIN}}
}
