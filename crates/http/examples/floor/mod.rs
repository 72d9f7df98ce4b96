//! What both hop floors share (`hop_floor.rs`, `hop_floor_raw.rs`): the arguments, Tokio's
//! current-thread runtime and the TCP accept loop, each client connection served by
//! `connection` with the upstream Unix socket's path.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Serves `LISTEN_ADDR UNIX_SOCKET` from the command line until the process is stopped.
pub fn run<F, Fut>(name: &str, connection: F) -> Result<(), Error>
where
    F: Fn(TcpStream, String) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(socket)) = (args.next(), args.next()) else {
        return Err(format!("usage: {name} LISTEN_ADDR UNIX_SOCKET").into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let name = name.to_string();
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        eprintln!("{name}: {listen} -> {socket}");
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (socket, name) = (socket.clone(), name.clone());
            tokio::spawn(async move {
                if let Err(e) = connection(stream, socket).await {
                    eprintln!("{name}: connection ended: {e}");
                }
            });
        }
    })
}
