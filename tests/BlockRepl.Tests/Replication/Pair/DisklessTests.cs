using System.Globalization;
using BlockRepl.Tests.Integration;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>
/// A failing local disk on a sync primary (on-io-error detach): the volume goes diskless, serves reads and writes
/// through the peer, the client sees no error; `blockrepl attach` pulls back what the disk missed.
/// </summary>
public sealed class DisklessTests(ITestOutputHelper output)
{
    [Fact]
    public async Task InjectedDiskErrors_UnderAckCheckWrites_Diskless_NoClientError_ZeroLost_AttachMakesImagesIdentical()
    {
        await AckCheck.EnsureLibnbdAsync();
        Tool.Require("qemu-io");
        using var faults = new TempDirectory();
        var fault = faults.PathOf("disk-fails");
        await using var pair = await ReplicaPair.StartAsync("sync", "32M", extraA: ["--fault-injection-file", fault]);
        var state = pair.DirA.PathOf("ack.state");
        AckCheck.WriterSummary summary;
        await using (var writer = ChildProcess.Start(AckCheck.Script,
        [
            "write", "--uri", pair.A!.NbdUri, "--state", state, "--seconds", "5", "--blocks", "4096", "--flush-every", "64",
            "--fua-ratio", "0.05", "--seed", "81",
        ]))
        {
            await writer.WaitForLineAsync(l => l.StartsWith("ackcheck: writer connected", StringComparison.Ordinal), "ackcheck writer start");
            await Task.Delay(1500);
            await File.WriteAllTextAsync(fault, "fail"); // from now on every pread/pwrite/fdatasync of A's image gets EIO
            Assert.True(await writer.WaitForExitAsync() == 0, $"the client saw an error after the local disk failed.\n{writer.Describe()}\n{pair.A.Stderr}");
            summary = AckCheck.ParseWriterSummary(writer.StdoutLines, writer.Describe());
        }

        var a = await ReplicaPair.VolumeAsync(pair.A);
        output.WriteLine($"writer: {summary.Sent} sent, {summary.Acked} acked; primary: disk {ReplicaPair.Str(a, "disk")}, "
            + $"{a.GetProperty("localMissingBytes")} bytes only on the peer; last error: {a.GetProperty("lastError")}");
        Assert.Equal("diskless", ReplicaPair.Str(a, "disk"));
        Assert.True(a.GetProperty("localMissingBytes").GetInt64() > 0, $"nothing was written only to the peer: {a}");
        Assert.Contains("detached", a.GetProperty("lastError").GetString() ?? "", StringComparison.Ordinal);

        // Reads through the diskless primary come from the peer: every acknowledged write is there.
        var acked = await AckCheck.VerifyAsync(pair.A.NbdUri, state, "acked");
        Assert.True(acked.ExitCode == 0 && acked.Lost == 0 && acked.Corrupt == 0 && acked.Checked > 0, $"verify through the diskless primary: {acked}");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "write -P 0x7e 30M 1M", "-c", "read -P 0x7e 30M 1M"], Tool.DefaultTimeout)).EnsureSuccess();

        // While the disk still fails, attach is refused and the volume stays diskless.
        var early = await ReplicaPair.CliAsync(pair.A, "attach");
        Assert.True(early.ExitCode == 1 && early.Stderr.Contains("attach refused", StringComparison.Ordinal), $"attach with the disk still failing: {early}");
        Assert.Equal("diskless", ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.A), "disk"));

        File.Delete(fault);
        var attach = await ReplicaPair.CliAsync(pair.A, "attach");
        output.WriteLine(attach.Stdout + attach.Stderr);
        Assert.Equal(0, attach.ExitCode);
        var back = await ReplicaPair.WaitInSyncAsync(pair.A);
        Assert.Equal(("uptodate", 0L), (ReplicaPair.Str(back, "disk"), back.GetProperty("localMissingBytes").GetInt64()));
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after attach the images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task Diskless_PeerGoesAway_IoFails_NothingStaleIsResynced_WhenThePeerReturns()
    {
        Tool.Require("qemu-io");
        using var faults = new TempDirectory();
        var fault = faults.PathOf("disk-fails");
        var (pair, proxy) = await LinkFaultTests.StartBehindProxyAsync("sync", "16M", extraA: ["--fault-injection-file", fault]);
        await using var _ = pair;
        await using var __ = proxy;
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x11 0 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(pair.A);
        await File.WriteAllTextAsync(fault, "fail");
        await Task.Delay(200);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "write -P 0x22 1M 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        Assert.Equal("diskless", ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.A), "disk"));

        // The link goes down: with no disk and no peer there is no copy to serve or to write to.
        await proxy.SendAsync("cut");
        await ReplicaPair.WaitForAsync(pair.A, v => ReplicaPair.Str(v, "connection") == "connecting", "the primary losing its peer");
        var write = await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "write -P 0x33 2M 1M"], Tool.DefaultTimeout);
        Assert.Contains("Input/output error", write.Stdout + write.Stderr, StringComparison.Ordinal);
        var read = await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "read -P 0x22 1M 4k"], Tool.DefaultTimeout);
        Assert.Contains("Input/output error", read.Stdout + read.Stderr, StringComparison.Ordinal);

        // The link returns: nothing is resynced from the dead disk; the peer's data is served again, the failed write
        // left no trace, and once the disk is back an attach makes the images identical.
        await proxy.SendAsync("pass");
        await ReplicaPair.WaitForAsync(pair.A, v => ReplicaPair.Str(v, "connection") == "connected", "the link back");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 1M", "-c", "read -P 0 2M 1M"],
            Tool.DefaultTimeout)).EnsureSuccess();
        File.Delete(fault);
        Assert.Equal(0, (await ReplicaPair.CliAsync(pair.A, "attach")).ExitCode);
        await ReplicaPair.WaitInSyncAsync(pair.A);
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task PrimaryFilesystemFull_Diskless_ClientSeesNoError_AttachAfterRoomIsMade()
    {
        Tool.Require("qemu-io");
        string? mountPoint = null;
        await using var pair = await ReplicaPair.StartAsync("sync", "64M", beforeStart: async p =>
        {
            // The primary's data dir is a 6 MiB tmpfs under a 64 MiB sparse image; the secondary has room.
            mountPoint = await p.MountTmpfsAsync('a', "6m");
        });
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x5a 0 2M"], Tool.DefaultTimeout)).EnsureSuccess();
        // 8 MiB do not fit in what is left of the tmpfs: ENOSPC locally, the peer has the data, the client sees success.
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A.NbdUri, "-c", "write -P 0x6b 16M 8M", "-c", "read -P 0x6b 16M 8M"], Tool.DefaultTimeout)).EnsureSuccess();
        var a = await ReplicaPair.VolumeAsync(pair.A);
        Assert.Equal("diskless", ReplicaPair.Str(a, "disk"));
        Assert.Contains("No space left", a.GetProperty("lastError").GetString() ?? "", StringComparison.Ordinal);

        // Still full: attach refused. Room made: attach pulls the missing ranges and the images agree.
        Assert.Equal(1, (await ReplicaPair.CliAsync(pair.A, "attach")).ExitCode);
        var remount = await Tool.RunAsync("mount", "-o", "remount,size=128m", mountPoint!);
        Assert.True(remount.ExitCode == 0, $"remount: {remount}");
        var attach = await ReplicaPair.CliAsync(pair.A, "attach");
        Assert.True(attach.ExitCode == 0, $"attach after making room: {attach}\n{pair.A.Stderr}");
        Assert.Equal("uptodate", ReplicaPair.Str(await ReplicaPair.WaitInSyncAsync(pair.A), "disk"));
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"after attach the images differ: {hashA} vs {hashB}");
    }

    [Fact]
    public async Task DisklessPrimaryRestarted_ComesBackAsOutdatedSecondary_NeverServesTheStaleImage()
    {
        Tool.Require("qemu-io");
        using var faults = new TempDirectory();
        var fault = faults.PathOf("disk-fails");
        await using var pair = await ReplicaPair.StartAsync("sync", "16M", extraA: ["--fault-injection-file", fault]);
        await File.WriteAllTextAsync(fault, "fail");
        await Task.Delay(200);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.A!.NbdUri, "-c", "write -P 0x33 1M 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        Assert.Equal("diskless", ReplicaPair.Str(await ReplicaPair.VolumeAsync(pair.A), "disk"));
        await pair.A.Kill9Async();
        File.Delete(fault);

        var back = await pair.StartNodeAsync('a', "primary");
        var a = await ReplicaPair.VolumeAsync(back);
        Assert.Equal(("secondary", "outdated"), (ReplicaPair.Str(a, "role"), ReplicaPair.Str(a, "disk")));
        Assert.Contains(back.Stderr.Split('\n'), l => l.Contains("detached its failed disk", StringComparison.Ordinal));
        var promote = await ReplicaPair.CliAsync(back, "promote");
        Assert.Equal(1, promote.ExitCode); // outdated: refused without --force

        // The peer takes over; the old primary gets a full resync and ends identical.
        Assert.Equal(0, (await ReplicaPair.CliAsync(pair.B!, "promote")).ExitCode);
        await ReplicaPair.WaitInSyncAsync(pair.B!);
        (await Tool.RunAsync("qemu-io", ["-f", "raw", pair.B!.NbdUri, "-c", "read -P 0x33 1M 1M"], Tool.DefaultTimeout)).EnsureSuccess();
        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"images differ: {hashA} vs {hashB}");
        output.WriteLine(string.Format(CultureInfo.InvariantCulture, "ok"));
    }
}
