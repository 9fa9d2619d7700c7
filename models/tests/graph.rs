//! The committed networks are in the form models/training/graph.py writes: no `Softmax` and no
//! `Resize` node. Those two ran slowly in ONNX Runtime's CPU provider (most of its inference
//! time, BENCHMARKS.md "Inference"); an export that skipped the rewrite would still score
//! right, only several times slower, so this test is what notices.

use cacd_models::Manifest;
use std::path::Path;
use tract_onnx::prelude::Framework;

fn op_types(file: &Path) -> Vec<String> {
    let proto = tract_onnx::onnx()
        .proto_model_for_path(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let graph = proto.graph.expect("a graph");
    graph.node.into_iter().map(|n| n.op_type).collect()
}

#[test]
fn committed_networks_have_no_softmax_or_resize() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [root.to_path_buf(), root.join("six-class")] {
        let manifest = Manifest::load(&dir.join("manifest.toml")).expect("manifest");
        assert!(!manifest.models.is_empty());
        for entry in &manifest.models {
            let ops = op_types(&dir.join(&entry.file));
            for slow in ["Softmax", "Resize"] {
                assert!(
                    !ops.iter().any(|op| op == slow),
                    "{}/{} has a {slow} node: run models/training/graph.py on it",
                    dir.display(),
                    entry.file
                );
            }
            // What the rewrite puts in their place is there.
            for op in ["ReduceMax", "ReduceSum", "Exp", "Concat", "Reshape"] {
                assert!(ops.iter().any(|o| o == op), "{}: no {op}", entry.file);
            }
        }
    }
}
