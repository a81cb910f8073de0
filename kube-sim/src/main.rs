//! The `kube-sim` binary: parse config, bind, serve the Kubernetes API until SIGTERM or
//! ctrl-c, then kill every container.

use std::process::ExitCode;

fn main() -> ExitCode {
    let config: kube_sim::Config = match service::cli::parse("kube-sim") {
        Ok(config) => config,
        Err(code) => return code,
    };
    let node = match config.node() {
        Ok(node) => node,
        Err(e) => {
            eprintln!("kube-sim: {e:#}");
            return ExitCode::from(2);
        }
    };
    service::telemetry::init(&config.log, "info");
    let cluster = kube_sim::Cluster::new(node, config.behaviour(), config.history);
    let kubeconfig = config.kubeconfig.clone().map(|path| (path, config.namespace.clone()));
    service::cli::serve("kube-sim", config.bind, move |listener, shutdown| {
        kube_sim::run(listener, cluster, kubeconfig, shutdown)
    })
}
