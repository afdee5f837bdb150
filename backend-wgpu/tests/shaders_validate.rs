//! CPU-only: every WGSL file, expanded for every dtype and op variant the
//! backend builds, parses and validates with naga, with no placeholder left.

use naga::valid::{Capabilities, ValidationFlags, Validator};
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
