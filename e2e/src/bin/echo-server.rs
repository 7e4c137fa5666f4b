//! `echo-server`: a tiny workload for pod-runner's tests. It reads `--config FILE`, lines
//! of `key=value` (`listen`, `secret_file`), and serves HTTP on `listen`:
//! `/readyz` 200, `/notready` 503, `/info` a JSON document of what the process saw (its
//! config text, the secret file's contents, its environment, pid and working directory).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config_path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("usage: echo-server --config FILE");
    let config = std::fs::read_to_string(config_path)
        .unwrap_or_else(|e| panic!("reading {config_path}: {e}"));
    let settings: BTreeMap<String, String> = config
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let listen = settings.get("listen").expect("config has no listen=");
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("binding {listen}: {e}"));
    eprintln!("echo-server listening on {listen}");
    let info = |settings: &BTreeMap<String, String>| {
        let secret = settings
            .get("secret_file")
            .map(|f| std::fs::read_to_string(f).unwrap_or_else(|e| format!("<{f}: {e}>")));
        let env: BTreeMap<String, String> = std::env::vars().collect();
        serde_json::json!({
            "pid": std::process::id(),
            "listen": listen,
            "config": config,
            "secret": secret,
            "env": env,
            "cwd": std::env::current_dir().ok(),
            "args": args,
        })
        .to_string()
    };
    for stream in listener.incoming().flatten() {
        let _ = serve(stream, || info(&settings));
    }
}

fn serve(mut stream: TcpStream, info: impl Fn() -> String) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/readyz" => ("200 OK", "ok".to_owned()),
        "/notready" => ("503 Service Unavailable", "not ready".to_owned()),
        "/info" => ("200 OK", info()),
        _ => ("404 Not Found", "not found".to_owned()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
