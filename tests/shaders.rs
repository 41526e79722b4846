//! Portability without the hardware: every shader must parse, validate and
//! translate to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12).

use std::path::Path;

use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// The library's shaders and the example client's.
fn shaders() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let directory = root.join("shaders");
    let mut shaders: Vec<(String, String)> = [directory.clone(), root.join("examples")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wgsl"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    shaders.sort();
    assert!(!shaders.is_empty(), "no shaders in {}", directory.display());
    shaders
}

fn parse_and_validate(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    (module, info)
}

#[test]
fn every_shader_validates_without_optional_capabilities() {
    for (name, source) in shaders() {
        let (module, _) = parse_and_validate(&name, &source);
        assert!(
            module
                .entry_points
                .iter()
                .all(|e| e.stage == naga::ShaderStage::Compute),
            "{name}: compute shaders only"
        );
    }
}

#[test]
fn every_shader_translates_to_spirv() {
    for (name, source) in shaders() {
        let (module, info) = parse_and_validate(&name, &source);
        let words = spv::write_vec(&module, &info, &spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
        assert_eq!(words[0], 0x0723_0203, "{name}: SPIR-V magic number");
    }
}

#[test]
fn every_shader_translates_to_metal() {
    for (name, source) in shaders() {
        let (module, info) = parse_and_validate(&name, &source);
        for entry in &module.entry_points {
            let pipeline = msl::PipelineOptions {
                entry_point: Some((entry.stage, entry.name.clone())),
                ..Default::default()
            };
            let (text, _) = msl::write_string(&module, &info, &msl::Options::default(), &pipeline)
                .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
            assert!(text.contains("kernel"), "{name}: MSL has a kernel");
        }
    }
}

#[test]
fn every_shader_translates_to_hlsl() {
    for (name, source) in shaders() {
        let (module, info) = parse_and_validate(&name, &source);
        let options = hlsl::Options {
            shader_model: hlsl::ShaderModel::V6_0,
            ..Default::default()
        };
        let pipeline = hlsl::PipelineOptions { entry_point: None };
        let mut text = String::new();
        hlsl::Writer::new(&mut text, &options, &pipeline)
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
        assert!(
            text.contains("[numthreads("),
            "{name}: HLSL has a compute entry"
        );
    }
}
