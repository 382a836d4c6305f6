//! Embedding the host: the README's "Embedding the host (Rust)" snippet, as a program CI
//! builds and runs over the data dir the demo installed (`cargo run -p cjm-embed-example --
//! target/ci-demo`). The README shows the lines between the `README` markers verbatim; a
//! test below keeps the two the same.

use cjm_host::Host;
use cjm_host::queue::{Composition, JobSpec, JobStatus, Node, OutputRef, Scope};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::args().nth(1).unwrap_or_else(|| ".cjm".to_owned());
    // README:begin
    let host = Host::builder()
        .data_dir(&data_dir)
        .load("text-stats")
        .load("sentence-split")
        .build()
        .await?;
    let q = host.queue();
    let text = "The host adds almost nothing. Guests run sandboxed! Workers run natively.";

    // One job: submit returns its id; wait returns once its terminal row is journaled.
    let kwargs = json!({"text": text})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let id = q
        .submit(
            JobSpec::execute("text-stats", kwargs)
                .priority(5)
                .run_id("run-1"),
        )
        .await?;
    let job = q.wait(&id, None).await?;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    println!(
        "words: {}",
        job.result
            .as_ref()
            .map_or(json!(null), |r| r["words"].clone())
    );

    // A composition: split and count in parallel, then merge both results in a task method.
    let mut events = q.subscribe(Scope::All); // bounded; a slow reader drops, counted
    let comp = Composition::new(vec![
        Node::new("split", "sentence-split").arg("text", json!(text)),
        Node::new("count", "text-stats").arg("text", json!(text)),
        Node::new("merge", "text-stats")
            .task("text_statistics", "merge_stats")
            .bind("sentences", OutputRef::whole("split"))
            .bind("stats", OutputRef::whole("count")),
    ]);
    let run = q
        .wait_composition(&q.submit_composition(comp).await?, None)
        .await?;
    println!("composition {}: {:?}", run.id, run.status);
    println!(
        "merged: {}",
        run.nodes["merge"].result.clone().unwrap_or_default()
    );
    println!(
        "events seen: {}",
        std::iter::from_fn(|| events.try_next()).count()
    );
    host.shutdown().await?;
    // README:end
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The README shows exactly the lines between the markers above.
    #[test]
    fn the_readme_shows_this_program() {
        let source = include_str!("main.rs");
        let readme = include_str!("../../../README.md");
        let start = source.find("// README:begin\n").expect("begin marker") + 16;
        let end = source.find("    // README:end").expect("end marker");
        let snippet: String = source[start..end]
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            readme.contains(&snippet),
            "README.md's embedding snippet differs from examples/embed/src/main.rs:\n{snippet}"
        );
    }
}
