use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct BenchCmd {}

impl BenchCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        anyhow::bail!("bench: being written")
    }
}
