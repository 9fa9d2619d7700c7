//! `cacd demo`: the whole loop on one machine with no set-up.
//!
//! phantom → C-STORE (our SCU) into an in-process `serve` on loopback → scoring → C-STORE of
//! the results to an in-process receiver (a small Storage SCP of our own, so DCMTK is not
//! needed) → printed summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::ServerAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use tokio::net::TcpListener;

use crate::config::{Config, Destination};
use crate::daemon::{self, Scorer, ScorerFactory};
use crate::dimse::{self, EXPLICIT_VR_LE, IMPLICIT_VR_LE};
use crate::forward::{self, ScuOptions};
use crate::phantom::{self, Burden, PhantomSpec};
use crate::pipeline::Pipeline;
use crate::queue::SeriesState;
use crate::store;

/// The result classes the receiver takes: SEG, Comprehensive SR, Secondary Capture.
const RESULT_CLASSES: [&str; 3] = [
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.7",
];

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Phantom seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Calcium burden of the phantom.
    #[arg(long, value_enum, default_value_t = Burden::Moderate)]
    pub burden: Burden,
    /// Keep everything in this folder (default: a temp folder, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Give up waiting for the result after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// After the summary, keep serve and its status page running until Ctrl-C.
    #[arg(long)]
    pub keep_serving: bool,
}

pub fn run(args: DemoArgs, pipeline_cfg: crate::pipeline::PipelineConfig) -> anyhow::Result<()> {
    let tmp;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("cacd-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("cacd demo in {}", root.display());
    let mut spec = PhantomSpec::new(args.seed, args.burden);
    spec.slices = Some(64);
    let t = Instant::now();
    let ph = phantom::generate(&spec);
    let study_dir = root.join("study");
    let files = phantom::write_study(&ph, &study_dir).context("writing the phantom")?;
    let files: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    println!(
        "1. phantom (seed {}, {:?}): {} instances in {} ms",
        args.seed,
        args.burden,
        files.len(),
        t.elapsed().as_millis()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let truth = ph.truth.clone();
    let (outcome, daemon) = rt.block_on(demo_loop(&root, &files, pipeline_cfg, args.timeout_s))?;
    println!();
    println!(
        "   Agatston (cacd)   {:>8.1}   risk {}   CAC-DRS {}",
        outcome.agatston, outcome.risk, outcome.cac_drs
    );
    println!(
        "   Agatston (truth)  {:>8.1}   risk {}   CAC-DRS {}",
        truth.agatston_total, truth.risk_category, truth.cac_drs
    );
    println!("   result.json       {}", outcome.result_json.display());
    println!("   results received  {}", outcome.received.display());
    println!("   status URL        http://{}/", outcome.status);
    let keep_serving = args.keep_serving;
    rt.block_on(async move {
        if keep_serving {
            println!("   serve and the status page keep running; Ctrl-C to stop");
            let _ = tokio::signal::ctrl_c().await;
        }
        daemon.shutdown().await;
    });
    if args.dir.is_none() {
        println!("   (temp folder removed; use --dir DIR to keep it)");
    }
    Ok(())
}

struct DemoOutcome {
    agatston: f64,
    risk: String,
    cac_drs: String,
    result_json: PathBuf,
    received: PathBuf,
    status: String,
}

async fn demo_loop(
    root: &Path,
    files: &[PathBuf],
    pipeline_cfg: crate::pipeline::PipelineConfig,
    timeout_s: u64,
) -> anyhow::Result<(DemoOutcome, daemon::Daemon)> {
    // 2. The receiver standing in for a PACS.
    let received = root.join("received");
    std::fs::create_dir_all(&received)?;
    let recv = TcpListener::bind("127.0.0.1:0").await?;
    let recv_port = recv.local_addr()?.port();
    tokio::spawn(receiver(recv, received.clone()));

    // 3. serve on loopback: random ports, data under the demo folder, short quiet period.
    let status_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        status: format!("127.0.0.1:{status_port}"),
        data_dir: root.join("data"),
        quiet_period_s: 2.0,
        accept_any: true,
        // The demo study is ~35 MB; the appliance defaults (1 GiB, 5 %) would refuse it on a
        // nearly full laptop or CI disk, which is not what a demo is for.
        receive: crate::config::ReceiveConfig {
            min_free_bytes: 256 << 20,
            min_free_percent: 0.0,
            ..Default::default()
        },
        destinations: vec![Destination {
            ae: "DEMO-PACS".into(),
            host: "127.0.0.1".into(),
            port: recv_port,
        }],
        ..Config::default()
    };
    // Load the models before anything listens, so a missing model is a clear error.
    let pipeline: Arc<dyn Scorer> =
        Arc::new(Pipeline::load(&pipeline_cfg).context("the scoring models cannot be loaded")?);
    let factory: ScorerFactory = Box::new(move || Ok(pipeline.clone()));
    let d = daemon::start(cfg, factory).await?;
    println!(
        "2. cacd serve listening on {} (AE CACD); receiver DEMO-PACS on 127.0.0.1:{recv_port}",
        d.dicom_addr
    );
    let status = d.status_addr.to_string();
    println!("   status page: http://{status}/");

    // 4. Send the study like a scanner would.
    let scu = ScuOptions {
        calling_ae: "DEMO-CT".into(),
        connect_timeout: Duration::from_secs(10),
        dimse_timeout: Duration::from_secs(60),
        max_pdu: 65536,
    };
    let dest = Destination {
        ae: "CACD".into(),
        host: "127.0.0.1".into(),
        port: d.dicom_addr.port(),
    };
    let t = Instant::now();
    forward::store_files(&scu, &dest, files)
        .await
        .map_err(|e| anyhow::anyhow!("sending the study: {e}"))?;
    println!(
        "3. C-STORE of {} instances in {} ms; waiting for the quiet period and scoring ...",
        files.len(),
        t.elapsed().as_millis()
    );

    // 5. Wait for delivery.
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let rec = loop {
        let all = d.queue.all_series()?;
        if let Some(r) = all.iter().find(|r| {
            matches!(
                r.state,
                SeriesState::Delivered | SeriesState::Rejected | SeriesState::Failed
            )
        }) {
            break r.clone();
        }
        if Instant::now() > deadline {
            bail!("no result after {timeout_s} s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let store_ = d.store.clone();
    if rec.state != SeriesState::Delivered {
        d.shutdown().await;
        bail!(
            "series ended {:?}: {}",
            rec.state,
            rec.reason.unwrap_or_default()
        );
    }
    let result_json = store_
        .result_dir(&rec.study_uid, &rec.series_uid, rec.version)
        .join("result.json");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&result_json)?)?;
    let n = std::fs::read_dir(&received)?.count();
    println!(
        "4. scored (result version {}), {n} result objects delivered to DEMO-PACS",
        rec.version
    );
    Ok((
        DemoOutcome {
            agatston: r["agatston_total"].as_f64().unwrap_or(f64::NAN),
            risk: r["risk_category"].as_str().unwrap_or("?").to_string(),
            cac_drs: r["cac_drs"].as_str().unwrap_or("?").to_string(),
            result_json,
            received,
            status,
        },
        d,
    ))
}

/// A minimal Storage SCP for the result classes that writes each object to `dir`.
async fn receiver(listener: TcpListener, dir: PathBuf) {
    while let Ok((socket, _)) = listener.accept().await {
        let dir = dir.clone();
        tokio::spawn(async move {
            let mut opts = ServerAssociationOptions::new()
                .accept_any()
                .ae_title("DEMO-PACS")
                .with_abstract_syntax(dimse::VERIFICATION)
                .with_transfer_syntax(EXPLICIT_VR_LE)
                .with_transfer_syntax(IMPLICIT_VR_LE);
            for c in RESULT_CLASSES {
                opts = opts.with_abstract_syntax(c);
            }
            let Ok(mut assoc) = opts.establish_async(socket).await else {
                return;
            };
            let (mut cmd_buf, mut data_buf) = (Vec::new(), Vec::new());
            let mut cmd: Option<dimse::Command> = None;
            while let Ok(pdu) = assoc.receive().await {
                let Pdu::PData { data } = pdu else {
                    if matches!(pdu, Pdu::ReleaseRQ) {
                        let _ = assoc.send(&Pdu::ReleaseRP).await;
                    }
                    return;
                };
                for pdv in data {
                    let pc = pdv.presentation_context_id;
                    let reply = match pdv.value_type {
                        PDataValueType::Command => {
                            cmd_buf.extend_from_slice(&pdv.data);
                            if !pdv.is_last {
                                continue;
                            }
                            let Ok(c) = dimse::read_command(&std::mem::take(&mut cmd_buf)) else {
                                return;
                            };
                            if c.field == dimse::C_ECHO_RQ {
                                Some(dimse::c_echo_rsp(c.message_id))
                            } else {
                                cmd = Some(c);
                                None
                            }
                        }
                        PDataValueType::Data => {
                            data_buf.extend_from_slice(&pdv.data);
                            if !pdv.is_last {
                                continue;
                            }
                            let Some(c) = cmd.take() else { return };
                            let ts = assoc
                                .presentation_contexts()
                                .iter()
                                .find(|p| p.id == pc)
                                .map(|p| p.transfer_syntax.clone())
                                .unwrap_or_default();
                            let bytes = std::mem::take(&mut data_buf);
                            let status = match save(&dir, &c, &ts, &bytes) {
                                Ok(()) => dimse::status::SUCCESS,
                                Err(_) => dimse::status::CANNOT_UNDERSTAND,
                            };
                            Some(dimse::c_store_rsp(
                                c.message_id,
                                &c.sop_class_uid,
                                &c.sop_instance_uid,
                                status,
                                None,
                            ))
                        }
                    };
                    if let Some(r) = reply {
                        let pdu = Pdu::PData {
                            data: vec![PDataValue {
                                presentation_context_id: pc,
                                value_type: PDataValueType::Command,
                                is_last: true,
                                data: r,
                            }],
                        };
                        if assoc.send(&pdu).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

fn save(dir: &Path, c: &dimse::Command, ts_uid: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .context("unknown transfer syntax")?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts)?;
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(c.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(c.sop_instance_uid.as_str())
        .transfer_syntax(ts_uid)
        .build()?;
    let name = obj
        .element_opt(tags::MODALITY)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "OBJ".into());
    let path = dir.join(format!(
        "{name}-{}.dcm",
        store::sanitize_uid(&c.sop_instance_uid)
    ));
    obj.with_exact_meta(meta).write_to_file(&path)?;
    Ok(())
}
