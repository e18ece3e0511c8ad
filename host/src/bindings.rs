//! Host-side bindings generated from `wit/ferry.wit`.
//!
//! The capability imports are generated once (world `capabilities`) and
//! every stage world reuses them through `with:`, so one `StageState`
//! implementation serves all five worlds and one `Linker` links them all.

pub mod caps {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "capabilities",
        imports: { default: async },
        with: {
            "ferry:pipeline/fs.file": crate::caps::fs::OpenFile,
        },
    });
}

pub use caps::ferry::pipeline::{fs, http, log, object_store, sql, types};

macro_rules! stage_world {
    ($module:ident, $world:literal) => {
        pub mod $module {
            wasmtime::component::bindgen!({
                path: "../wit",
                world: $world,
                exports: { default: async },
                with: {
                    "ferry:pipeline/types": crate::bindings::caps::ferry::pipeline::types,
                    "ferry:pipeline/log": crate::bindings::caps::ferry::pipeline::log,
                    "ferry:pipeline/fs": crate::bindings::caps::ferry::pipeline::fs,
                    "ferry:pipeline/sql": crate::bindings::caps::ferry::pipeline::sql,
                    "ferry:pipeline/http": crate::bindings::caps::ferry::pipeline::http,
                    "ferry:pipeline/object-store": crate::bindings::caps::ferry::pipeline::object_store,
                },
            });
        }
    };
}

stage_world!(source_world, "source-plugin");
stage_world!(document_source_world, "document-source-plugin");
stage_world!(extractor_world, "extractor-plugin");
stage_world!(resolver_world, "resolver-plugin");
stage_world!(store_world, "store-plugin");
stage_world!(renderer_world, "renderer-plugin");
