//! Checks that bytes are WebAssembly that Lull can run, before anything is stored or compiled.
//!
//! Lull runs WASI preview 1 command modules and WASI preview 2 command components. A module
//! that imports anything else (an `env` import from a C toolchain, a host API of another
//! runtime) could never be instantiated, so it is refused at submit time with the import named.

use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// What kind of WebAssembly a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A core module (WASI preview 1).
    Core,
    /// A component (WASI preview 2).
    Component,
}

/// Import namespaces a core module may use.
pub const CORE_IMPORT_MODULES: &[&str] = &["wasi_snapshot_preview1"];
/// Interface packages a component may import.
pub const COMPONENT_IMPORT_PACKAGES: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:random/",
    "wasi:sockets/",
    "lull:guest/",
];

/// Why bytes are not a runnable module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly file (it does not start with \"\\0asm\")")]
    NotWasm,
    /// The bytes are WebAssembly but do not validate.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// The module is a library, not a program: it has no entry point.
    #[error("{0}")]
    NotACommand(String),
    /// The module imports something Lull does not provide.
    #[error("imports {import}, which Lull does not provide (Lull provides {provided})")]
    UnsupportedImport {
        /// The import, as `module::name` or an interface name.
        import: String,
        /// What Lull offers instead.
        provided: String,
    },
}

/// Checks `bytes`: WebAssembly, valid, and importing only what Lull provides.
pub fn check(bytes: &[u8]) -> Result<ModuleKind, ModuleError> {
    let kind = if Parser::is_component(bytes) {
        ModuleKind::Component
    } else if Parser::is_core_wasm(bytes) {
        ModuleKind::Core
    } else {
        return Err(ModuleError::NotWasm);
    };
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| ModuleError::Invalid(e.to_string()))?;

    let mut depth = 0usize;
    let mut entry = false;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| ModuleError::Invalid(e.to_string()))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ImportSection(reader) if depth == 0 && kind == ModuleKind::Core => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    if !CORE_IMPORT_MODULES.contains(&import.module) {
                        return Err(ModuleError::UnsupportedImport {
                            import: format!("{}::{}", import.module, import.name),
                            provided: CORE_IMPORT_MODULES.join(", "),
                        });
                    }
                }
            }
            Payload::ExportSection(reader) if depth == 0 && kind == ModuleKind::Core => {
                for export in reader {
                    let export = export.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    entry |=
                        export.name == "_start" && export.kind == wasmparser::ExternalKind::Func;
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    entry |= export.name.name.starts_with("wasi:cli/run@");
                }
            }
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| ModuleError::Invalid(e.to_string()))?;
                    let name = import.name.name;
                    if !COMPONENT_IMPORT_PACKAGES
                        .iter()
                        .any(|p| name.starts_with(p))
                    {
                        return Err(ModuleError::UnsupportedImport {
                            import: name.to_owned(),
                            provided: COMPONENT_IMPORT_PACKAGES
                                .iter()
                                .map(|p| format!("{p}*"))
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    if !entry {
        return Err(ModuleError::NotACommand(match kind {
            ModuleKind::Core => "exports no _start function: build it as a WASI command (a program with a main), not a library".into(),
            ModuleKind::Component => "exports no wasi:cli/run interface: build it as a WASI command component (a program with a main), not a library".into(),
        }));
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wasm(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn wasi_command_passes() {
        let bytes = wasm(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                (memory (export "memory") 1)
                (func (export "_start")))"#,
        );
        assert_eq!(check(&bytes), Ok(ModuleKind::Core));
    }

    #[test]
    fn foreign_import_is_named() {
        let bytes = wasm(r#"(module (import "env" "printf" (func)) (func (export "_start")))"#);
        let err = check(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "imports env::printf, which Lull does not provide (Lull provides wasi_snapshot_preview1)"
        );
    }

    #[test]
    fn a_library_is_not_a_command() {
        let bytes =
            wasm(r#"(module (func (export "add") (param i32 i32) (result i32) local.get 0))"#);
        assert!(matches!(check(&bytes), Err(ModuleError::NotACommand(m)) if m.contains("_start")));
    }

    #[test]
    fn text_is_not_wasm() {
        assert_eq!(check(b"#!/bin/sh\necho hi\n"), Err(ModuleError::NotWasm));
    }

    #[test]
    fn truncated_module_is_invalid() {
        let bytes = wasm(r#"(module (func (export "_start")))"#);
        assert!(matches!(
            check(&bytes[..bytes.len() - 3]),
            Err(ModuleError::Invalid(_))
        ));
    }
}
