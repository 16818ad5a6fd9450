//! Sans-IO protocol code: the binary frame codec and the bodies of the control
//! operations. Nothing under this module touches a socket, a runtime or a clock.

pub mod binary;
pub mod body;
pub mod publish;
pub mod wire;
pub mod ws;
