using System.Globalization;
using BlockRepl.Tests.Integration;
using Xunit;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>`make run` (tools/run-local.sh): a working pair, a client can write through it, Ctrl-C stops both.</summary>
public sealed class RunLocalTests
{
    [Fact]
    public async Task RunLocal_StartsAPair_WritesReplicate_SigintStopsBothCleanly()
    {
        Tool.Require("qemu-io");
        using var dir = new TempDirectory();
        var data = dir.PathOf("data");
        var ports = Enumerable.Range(0, 4).Select(_ => ReplicaPair.FreePort().ToString(CultureInfo.InvariantCulture)).ToArray();
        var script = Path.Combine(RepoLayout.Root, "tools", "run-local.sh");
        var env = $"DATA_DIR={data} SIZE=64M NBD_PORT_A={ports[0]} NBD_PORT_B={ports[1]} REPL_PORT_A={ports[2]} REPL_PORT_B={ports[3]} BLOCKREPL={RepoLayout.DaemonBinary}";
        await using var run = ChildProcess.Start("/usr/bin/env", [.. env.Split(' '), "bash", script]);
        await run.WaitForLineAsync(l => l.StartsWith("Press Ctrl-C to stop both nodes", StringComparison.Ordinal), "run-local banner");

        var uriA = $"nbd://127.0.0.1:{ports[0]}/vol0";
        var uriB = $"nbd://127.0.0.1:{ports[1]}/vol0";
        (await Tool.RunAsync("qemu-io", ["-f", "raw", uriA, "-c", "write -P 0xab 0 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        // Sync mode: acknowledged means on the secondary, which exports it read-only.
        (await Tool.RunAsync("qemu-io", ["-f", "raw", "-r", uriB, "-c", "read -P 0xab 0 1M"], Tool.DefaultTimeout)).EnsureSuccess();

        run.Signal(ChildProcess.SIGINT);
        var exit = await run.WaitForExitAsync();
        Assert.True(exit == 0, $"run-local exited {exit} after SIGINT.\n{run.Describe()}");
        Assert.Contains(run.StdoutLines, l => l.Contains("run-local: stopped", StringComparison.Ordinal));
        foreach (var node in new[] { "a", "b" })
        {
            Assert.False(File.Exists(Path.Combine(data, node, "admin.sock")), $"node {node} left its admin socket: not stopped cleanly");
        }

        Assert.Equal(await TestData.Sha256OfFileAsync(Path.Combine(data, "a", "vol0.img")), await TestData.Sha256OfFileAsync(Path.Combine(data, "b", "vol0.img")));
    }
}
