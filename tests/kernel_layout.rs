//! The kernels repeat the host's constants and struct layouts
//! (`src/backend/gpu/layout.rs`): these tests fail when they disagree.
//! naga reflects `shaders/decode.wgsl`; `kernels/decode.cu`'s `#define`s
//! and structs are read as text here, and its compilation for the CPU
//! (`tests/cuda_on_cpu.rs`) static-asserts the same layouts with the C++
//! compiler.

use std::path::Path;

use ecfloat::backend::gpu::layout::{DispatchRecord, KERNEL_CONSTANTS, KERNEL_STRUCTS};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn shader() -> naga::Module {
    parse(&read("shaders/decode.wgsl"))
}

fn parse(source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)))
}

/// Workgroup memory as WebGPU counts it: each variable rounded up to 16
/// bytes.
#[cfg(feature = "wgpu")]
fn workgroup_bytes(module: &naga::Module) -> u32 {
    module
        .global_variables
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.space == naga::AddressSpace::WorkGroup)
        .map(|v| {
            module.types[v.ty]
                .inner
                .size(module.to_ctx())
                .next_multiple_of(16)
        })
        .sum()
}

#[test]
fn the_shader_has_the_hosts_constants() {
    let module = shader();
    for (name, value) in KERNEL_CONSTANTS {
        let constant = module
            .constants
            .iter()
            .map(|(_, c)| c)
            .find(|c| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("decode.wgsl has no constant {name}"));
        match module.global_expressions[constant.init] {
            naga::Expression::Literal(naga::Literal::U32(found)) => {
                assert_eq!(found, value, "decode.wgsl: {name}")
            }
            ref other => panic!("decode.wgsl: {name} is {other:?}, not a u32"),
        }
    }
}

#[test]
fn the_shader_has_the_hosts_structs() {
    let module = shader();
    for (name, fields, size) in KERNEL_STRUCTS {
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match &ty.inner {
                naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some(name) => {
                    Some((members.clone(), *span))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("decode.wgsl has no struct {name}"));
        assert_eq!(span as usize, size, "decode.wgsl: size of {name}");
        let found: Vec<(&str, u32)> = members
            .iter()
            .map(|m| (m.name.as_deref().unwrap_or_default(), m.offset))
            .collect();
        let expected: Vec<(&str, u32)> = fields
            .iter()
            .enumerate()
            .map(|(index, &field)| (field, 4 * index as u32))
            .collect();
        assert_eq!(found, expected, "decode.wgsl: fields of {name}");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn the_shader_declares_the_workgroup_memory_the_host_requests() {
    use ecfloat::backend::wgpu::{
        COMPACT_DECODE_WORKGROUP_BYTES, DECODE_WORKGROUP_BYTES, decode_shader_source,
    };
    assert_eq!(workgroup_bytes(&shader()), DECODE_WORKGROUP_BYTES);
    let compact = decode_shader_source(true);
    assert_ne!(compact, decode_shader_source(false));
    assert_eq!(
        workgroup_bytes(&parse(&compact)),
        COMPACT_DECODE_WORKGROUP_BYTES
    );
}

/// The value of `#define NAME value` in the CUDA kernel.
fn cuda_define(source: &str, name: &str) -> Option<u32> {
    source.lines().find_map(|line| {
        let rest = line.strip_prefix("#define ")?.strip_prefix(name)?;
        let value = rest.trim().trim_end_matches('u');
        match value.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        }
    })
}

/// The field names of `struct NAME { … }` in the CUDA kernel.
fn cuda_fields(source: &str, name: &str) -> Vec<String> {
    let start = source
        .find(&format!("struct {name} {{"))
        .unwrap_or_else(|| panic!("decode.cu has no struct {name}"));
    let body = &source[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
    body.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .map(|line| {
            line.trim_end_matches(';')
                .rsplit([' ', '*'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn the_cuda_kernel_has_the_hosts_constants_and_structs() {
    let source = read("kernels/decode.cu");
    for (name, value) in KERNEL_CONSTANTS {
        assert_eq!(cuda_define(&source, name), Some(value), "decode.cu: {name}");
    }
    for (name, fields, _) in KERNEL_STRUCTS {
        assert_eq!(cuda_fields(&source, name), fields, "decode.cu: {name}");
    }
    let mut dispatch = vec!["params"];
    dispatch.extend(DispatchRecord::POINTERS);
    assert_eq!(cuda_fields(&source, "Dispatch"), dispatch);
}
