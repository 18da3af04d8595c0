//! gaptun-bench: gaptun vs kcptun vs direct TCP through an emulated lossy link.
mod emulator;
mod error;
mod procs;
mod scenarios;

fn main() {
    let i: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let link = scenarios::quick()[i].link(1);
    let _ = procs::install_interrupt_handler();
    let emu = emulator::Emulator::start(std::process::id(), &link).unwrap();
    let mut srv = std::process::Command::new("ip")
        .args(["netns", "exec", emu.ns_b(), "iperf3", "-s", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            emu.ns_a(),
            "iperf3",
            "-c",
            "10.201.0.2",
            "-t",
            "8",
        ])
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{}", serde_json::to_string(&emu.stats()).unwrap());
    srv.kill().unwrap();
    srv.wait().unwrap();
}
