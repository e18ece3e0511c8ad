//! `ferry serve` through real HTTP on 127.0.0.1, against a real S3 server
//! and the real pipeline. One module per behaviour.
