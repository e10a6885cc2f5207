//! How a log channel connection is carried: plain TCP when the operator
//! asked for it, otherwise mutual TLS with the cluster's certificates and
//! the peer checked by node name, before any message is read.

use crate::error::LinkError;
use fttls::Security;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

fn halves<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (ReadHalf, WriteHalf) {
    let (read, write) = tokio::io::split(stream);
    (Box::new(read), Box::new(write))
}

/// The primary's side: a connected stream, secured if asked.
pub(crate) async fn secure_client(
    stream: TcpStream,
    security: &Security,
) -> Result<(ReadHalf, WriteHalf), LinkError> {
    match security {
        Security::Insecure => {
            let (read, write) = stream.into_split();
            Ok((Box::new(read), Box::new(write)))
        }
        Security::Tls { identity, peer } => {
            let stream = identity.connect(stream, peer).await.map_err(|e| match e {
                fttls::TlsError::Handshake(io) => LinkError::io("the TLS handshake", io),
                refused => LinkError::Unauthenticated(refused.to_string()),
            })?;
            Ok(halves(stream))
        }
    }
}

/// The backup's side: the TLS handshake, then the client's name. A
/// client that fails the handshake is only logged (it cannot be told
/// anything securely); one with the wrong name is told why, over TLS.
pub(crate) async fn secure_server(
    stream: TcpStream,
    security: &Security,
) -> Result<(ReadHalf, WriteHalf, Result<(), String>), String> {
    match security {
        Security::Insecure => {
            let (read, write) = stream.into_split();
            Ok((Box::new(read), Box::new(write), Ok(())))
        }
        Security::Tls { identity, peer } => {
            let (stream, cert) = identity.accept(stream).await.map_err(|e| e.to_string())?;
            let named = cert.check_name(peer).map_err(|e| e.to_string());
            let (read, write) = halves(stream);
            Ok((read, write, named))
        }
    }
}
