//! The no-op TCP server (`--noop-server`): accepts device connections and discards their bytes,
//! counting bytes and LF-terminated lines. Run against it, the generator shows its own ceiling —
//! the baseline row of `tuning/bench.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Counters of the no-op server.
#[derive(Debug, Default)]
pub struct NoopStats {
    pub connections: AtomicU64,
    pub bytes: AtomicU64,
    /// LF bytes seen (= TEXT frames).
    pub lines: AtomicU64,
}

/// Accepts and drains connections until the task is dropped.
pub async fn serve(listener: TcpListener, stats: Arc<NoopStats>) -> std::io::Result<()> {
    loop {
        let (mut socket, _) = listener.accept().await?;
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        let lines = memchr_count(&buf[..n]);
                        stats.lines.fetch_add(lines, Ordering::Relaxed);
                    }
                }
            }
            stats.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn memchr_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn counts_bytes_and_lines() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(NoopStats::default());
        let server = tokio::spawn(serve(listener, stats.clone()));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"a\nbb\nccc").await.unwrap();
        drop(client);
        for _ in 0..200 {
            if stats.bytes.load(Ordering::Relaxed) == 8
                && stats.connections.load(Ordering::Relaxed) == 0
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(stats.bytes.load(Ordering::Relaxed), 8);
        assert_eq!(stats.lines.load(Ordering::Relaxed), 2);
        server.abort();
    }
}
