use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = alpacon::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("alpacon: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(alpacon::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let (code, hint) = alpacon::error::classify(&err);
            // `{:#}` joins the context chain: "uploading x: connection reset".
            eprintln!("alpacon: {err:#}");
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(code)
        }
    }
}
