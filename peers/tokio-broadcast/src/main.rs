//! A plain tokio + tokio-tungstenite broadcast server, written the way most
//! such servers are, as a comparison peer for `volley-loadgen ws`: every
//! message any client sends is forwarded to every connected client (the
//! sender included) through a `tokio::sync::broadcast` channel. One task per
//! connection, one multi-threaded runtime. Not part of volley.
//!
//! Usage: tokio-broadcast 127.0.0.1:3301

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3301".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("tokio-broadcast on {addr}");
    // Lagging receivers skip messages (and the load generator counts them as
    // lost): a bounded channel is what keeps such a server's memory bounded.
    let (tx, _) = broadcast::channel::<Message>(4096);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut sink, mut source) = ws.split();
            let mut rx = tx.subscribe();
            loop {
                tokio::select! {
                    m = source.next() => match m {
                        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => { let _ = tx.send(m); }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    m = rx.recv() => match m {
                        Ok(m) => if sink.send(m).await.is_err() { return },
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    },
                }
            }
        });
    }
}
