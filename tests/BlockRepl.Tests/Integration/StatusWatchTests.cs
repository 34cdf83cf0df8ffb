using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json;
using BlockRepl.Replication.V1;
using BlockRepl.Tests.Replication;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// `blockrepl status --watch` and the Admin/WatchStatus stream behind it, against real daemons: changes arrive when
/// they happen, not at the next refresh; a watcher that goes away leaves nothing behind; a daemon that stops does not
/// wait for its watchers.
/// </summary>
public sealed class StatusWatchTests
{
    private static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(60);

    /// <summary>Generous: far above what a SIGTERM takes with nothing open, far below the host's 35 s graceful stop.</summary>
    private static readonly TimeSpan PromptStop = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task WatchStatus_OnASecondary_SendsThePromotionAtOnce_NotAtTheNextRefresh()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, "16M", extra: ["--role", "secondary"]);
        using var channel = BlockRepl.Tests.Replication.AdminEndpointTests.UnixChannel(DaemonProcess.AdminSocketOf(dir));
        using var cts = new CancellationTokenSource(HangLimit);
        // The periodic refresh every 10 s: a reply within 2 s of the promotion can only come from its signal.
        using var call = new Admin.AdminClient(channel).WatchStatus(
            new WatchStatusRequest { MinIntervalMs = 250, MaxIntervalMs = 10_000 }, cancellationToken: cts.Token);

        Assert.True(await call.ResponseStream.MoveNext(cts.Token), "the stream ended before its first reply");
        var first = Stopwatch.GetTimestamp();
        Assert.Equal(VolumeRole.Secondary, call.ResponseStream.Current.Volumes.Single().Role);

        var promote = await Tool.RunAsync(RepoLayout.DaemonBinary, ["promote", "--force", "--admin", daemon.AdminAddress], Tool.DefaultTimeout);
        promote.EnsureSuccess();
        var promoted = Stopwatch.GetTimestamp();

        var replies = new List<(VolumeRole Role, TimeSpan AfterFirst)>();
        while (true)
        {
            Assert.True(await call.ResponseStream.MoveNext(cts.Token), $"the stream ended before it showed the promotion: {string.Join(", ", replies)}");
            var at = Stopwatch.GetTimestamp();
            var role = call.ResponseStream.Current.Volumes.Single().Role;
            replies.Add((role, Stopwatch.GetElapsedTime(first, at)));
            if (role == VolumeRole.Primary)
            {
                // Read after the promote returned, so a reply that came while it ran counts as coming at its end.
                var late = Stopwatch.GetElapsedTime(promoted, at);
                Assert.True(late < TimeSpan.FromSeconds(2), $"the reply with role primary came {late.TotalMilliseconds:F0} ms after promote returned: {string.Join(", ", replies)}");
                Assert.True(Stopwatch.GetElapsedTime(first, at) < TimeSpan.FromSeconds(10),
                    $"promote took so long that the periodic refresh may have carried the change: {string.Join(", ", replies)}");
                break;
            }
        }

        await cts.CancelAsync();
        await daemon.StopAsync();
    }

    [Fact]
    public async Task StatusWatchJson_EachLine_IsOneJsonObjectWithTheVolume_UntilInterrupted()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, "16M", extra: ["--role", "secondary"]);
        await using var watch = ChildProcess.Start(RepoLayout.DaemonBinary, ["status", "--watch", "--json", "--admin", daemon.AdminAddress]);

        var first = await watch.WaitForLineAsync(_ => true, "a first status line");
        // Each reply allocates in the daemon, so its runtime counters make every line differ from the one before.
        await watch.WaitForLineAsync(l => l != first, "a second status line (the periodic refresh)");
        (await Tool.RunAsync(RepoLayout.DaemonBinary, ["promote", "--force", "--admin", daemon.AdminAddress], Tool.DefaultTimeout)).EnsureSuccess();
        await watch.WaitForLineAsync(l => l.Contains("\"role\":\"primary\"", StringComparison.Ordinal), "a line with role primary");

        watch.Signal(ChildProcess.SIGINT);
        Assert.Equal(0, await watch.WaitForExitAsync());
        Assert.Equal("", watch.Stderr);
        var lines = watch.StdoutLines;
        Assert.True(lines.Count >= 3, watch.Describe());
        foreach (var line in lines)
        {
            using var doc = ParseOrFail(line, watch);
            var volume = doc.RootElement.GetProperty("volumes").EnumerateArray().Single();
            Assert.Equal("vol", volume.GetProperty("name").GetString());
            Assert.True(volume.GetProperty("role").GetString() is "secondary" or "primary", line);
        }

        await daemon.StopAsync();
    }

    [Fact]
    public async Task WatchersThatDisconnect_LeaveTheDaemonIdle_StatusAnswers_SigtermStopsPromptly()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, "16M");

        // A CLI watcher killed outright (its connection drops without a cancel) ...
        await using (var watch = ChildProcess.Start(RepoLayout.DaemonBinary, ["status", "--watch", "--admin", daemon.AdminAddress]))
        {
            await watch.WaitForLineAsync(l => l.Contains("vol primary", StringComparison.Ordinal), "a status line");
            watch.Signal(ChildProcess.SIGKILL);
            await watch.WaitForExitAsync();
        }

        // ... and gRPC watchers that cancel their calls, many at once.
        using (var channel = BlockRepl.Tests.Replication.AdminEndpointTests.UnixChannel(DaemonProcess.AdminSocketOf(dir)))
        {
            for (var i = 0; i < 20; i++)
            {
                using var cts = new CancellationTokenSource(HangLimit);
                using var call = new Admin.AdminClient(channel).WatchStatus(new WatchStatusRequest { MinIntervalMs = 50, MaxIntervalMs = 50 }, cancellationToken: cts.Token);
                Assert.True(await call.ResponseStream.MoveNext(cts.Token));
                await cts.CancelAsync();
            }
        }

        var status = await daemon.StatusJsonAsync();
        Assert.Equal("vol", status.GetProperty("volumes")[0].GetProperty("name").GetString());

        var stopping = Stopwatch.StartNew();
        await daemon.StopAsync();
        Assert.True(stopping.Elapsed < PromptStop, $"the daemon took {stopping.Elapsed.TotalSeconds:F1} s to stop.\n{daemon.Stderr}");
        Assert.DoesNotContain("fail", daemon.Stderr, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task StatusWatch_DaemonStops_DoesNotWaitForTheWatcher_WhichSaysSoOnceAndExits1()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, "16M");
        await using var watch = ChildProcess.Start(RepoLayout.DaemonBinary, ["status", "--watch", "--admin", daemon.AdminAddress]);
        await watch.WaitForLineAsync(l => l.Contains("vol primary", StringComparison.Ordinal), "a status line");

        var stopping = Stopwatch.StartNew();
        await daemon.StopAsync();
        Assert.True(stopping.Elapsed < PromptStop, $"the daemon took {stopping.Elapsed.TotalSeconds:F1} s to stop with a watch open.\n{daemon.Stderr}");

        Assert.Equal(1, await watch.WaitForExitAsync());
        var said = watch.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(said.Length == 1 && said[0].Contains("went away", StringComparison.Ordinal), watch.Describe());
    }

    [Fact]
    public async Task StatusWatch_OlderDaemonWithoutTheStream_PollsWithOneNote()
    {
        // A daemon from before Admin/WatchStatus: its Admin service answers Status, and WatchStatus with UNIMPLEMENTED.
        await using var older = await LoopbackGrpcServer.StartAsync(app => app.MapGrpcService<OlderAdmin>());
        var address = $"{older.Address.Host}:{older.Address.Port}";
        await using var watch = ChildProcess.Start(RepoLayout.DaemonBinary, ["status", "--watch", "--json", "--admin", address]);

        var first = await watch.WaitForLineAsync(_ => true, "a first polled status");
        await watch.WaitForLineAsync(l => l != first, "a second polled status");
        watch.Signal(ChildProcess.SIGINT);
        Assert.Equal(0, await watch.WaitForExitAsync());

        var notes = watch.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(notes.Length == 1 && notes[0].Contains("polling every second", StringComparison.Ordinal), watch.Describe());
        foreach (var line in watch.StdoutLines)
        {
            using var doc = ParseOrFail(line, watch);
            Assert.Equal("old", doc.RootElement.GetProperty("volumes")[0].GetProperty("name").GetString());
        }
    }

    /// <summary>Admin as an older daemon serves it: Status only (each reply counts up in its pid, so lines differ).</summary>
    private sealed class OlderAdmin : Admin.AdminBase
    {
        private static int _calls;

        public override Task<StatusReply> Status(StatusRequest request, ServerCallContext context)
        {
            var reply = new StatusReply { DaemonVersion = "0.9", Pid = Interlocked.Increment(ref _calls) };
            reply.Volumes.Add(new VolumeStatus { Name = "old", Role = VolumeRole.Primary, Counters = new VolumeCounters() });
            return Task.FromResult(reply);
        }
    }

    private static JsonDocument ParseOrFail(string line, ChildProcess watch)
    {
        try
        {
            return JsonDocument.Parse(line);
        }
        catch (JsonException ex)
        {
            Assert.Fail($"not one JSON object per line ({ex.Message}): '{line}'\n{watch.Describe()}");
            throw;
        }
    }
}
