using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using BlockRepl.Tests.Integration;
using Xunit;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>
/// Two real daemons on loopback replicating one volume: node A (created primary) and node B (created secondary),
/// each with its own data dir, NBD unix socket, admin socket and replication port, each the other's --peer.
/// </summary>
internal sealed class ReplicaPair : IAsyncDisposable
{
    public static readonly TimeSpan DefaultWait = TimeSpan.FromSeconds(60);

    private ReplicaPair(string mode, string size, IReadOnlyList<string> extra)
    {
        Mode = mode;
        Size = size;
        Extra = extra;
        PortA = FreePort();
        PortB = FreePort();
    }

    public TempDirectory DirA { get; } = new();

    public TempDirectory DirB { get; } = new();

    public int PortA { get; }

    public int PortB { get; }

    public string Mode { get; }

    public string Size { get; }

    public IReadOnlyList<string> Extra { get; }

    /// <summary>Where A sends its stream (B's port, or a fault proxy in front of it).</summary>
    public string? PeerOfA { get; set; }

    public DaemonProcess? A { get; private set; }

    public DaemonProcess? B { get; private set; }

    /// <summary>tmpfs mounts made by <see cref="MountTmpfsAsync"/>: unmounted after the daemons stop, before the directories go.</summary>
    private readonly List<string> _mounts = [];

    public string ImageA => Path.Combine(DaemonProcess.DataDirOf(DirA), "vol.img");

    public string ImageB => Path.Combine(DaemonProcess.DataDirOf(DirB), "vol.img");

    /// <summary>Starts B (secondary), then A (primary), and by default waits until A reports the pair in sync.</summary>
    public static async Task<ReplicaPair> StartAsync(
        string mode = "sync", string size = "64M", IReadOnlyList<string>? extra = null, bool waitInSync = true, Func<ReplicaPair, Task>? beforeStart = null,
        IReadOnlyList<string>? extraA = null)
    {
        var pair = new ReplicaPair(mode, size, extra ?? []);
        try
        {
            if (beforeStart is not null)
            {
                await beforeStart(pair);
            }

            await pair.StartNodeAsync('b', "secondary");
            await pair.StartNodeAsync('a', "primary", extraA);
            if (waitInSync)
            {
                await WaitInSyncAsync(pair.A!);
            }

            return pair;
        }
        catch
        {
            await pair.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// A port the kernel just called free. Tests run in parallel, so a port handed out once is never handed out
    /// again in this test run (another test may not have bound it yet).
    /// </summary>
    public static int FreePort()
    {
        while (true)
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
            lock (HandedOut)
            {
                if (HandedOut.Add(port))
                {
                    return port;
                }
            }
        }
    }

    private static readonly HashSet<int> HandedOut = [];

    /// <summary>(Re)starts a node; <paramref name="role"/> only matters when its metadata is created.</summary>
    public async Task<DaemonProcess> StartNodeAsync(char node, string role = "secondary", IReadOnlyList<string>? extra = null)
    {
        var dir = node == 'a' ? DirA : DirB;
        var (port, peerPort) = node == 'a' ? (PortA, PortB) : (PortB, PortA);
        var peer = node == 'a' && PeerOfA is not null ? PeerOfA : $"http://127.0.0.1:{peerPort.ToString(CultureInfo.InvariantCulture)}";
        List<string> args =
        [
            "--role", role, "--listen", $"127.0.0.1:{port.ToString(CultureInfo.InvariantCulture)}", "--peer", peer, "--mode", Mode,
            .. Extra, .. extra ?? [],
        ];
        var daemon = await DaemonProcess.StartAsync(dir, Size, nbd: "unix:" + dir.PathOf("nbd.sock"), extra: args);
        if (node == 'a')
        {
            if (A is not null)
            {
                await A.DisposeAsync();
            }

            A = daemon;
        }
        else
        {
            if (B is not null)
            {
                await B.DisposeAsync();
            }

            B = daemon;
        }

        return daemon;
    }

    public static async Task<JsonElement> VolumeAsync(DaemonProcess daemon) =>
        (await daemon.StatusJsonAsync()).GetProperty("volumes")[0];

    /// <summary>Polls `blockrepl status --json` until <paramref name="condition"/> holds; fails with the last status.</summary>
    public static async Task<JsonElement> WaitForAsync(DaemonProcess daemon, Func<JsonElement, bool> condition, string what, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? DefaultWait);
        JsonElement last;
        while (true)
        {
            last = await VolumeAsync(daemon);
            if (condition(last))
            {
                return last;
            }

            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"timed out waiting for {what}; last status:\n{last}\nstderr:\n{daemon.Stderr}");
            }

            await Task.Delay(100);
        }
    }

    /// <summary>The primary is connected, nothing is queued, unacknowledged or dirty, and no resync runs.</summary>
    public static Task<JsonElement> WaitInSyncAsync(DaemonProcess primary, TimeSpan? timeout = null) =>
        WaitForAsync(primary, IsInSync, "the pair in sync", timeout);

    public static bool IsInSync(JsonElement v) =>
        Str(v, "role") == "primary" && Str(v, "connection") == "connected"
        && v.GetProperty("replication") is var r && r.ValueKind == JsonValueKind.Object
        && r.GetProperty("lastSeq").GetUInt64() == r.GetProperty("durableSeq").GetUInt64()
        && v.GetProperty("dirtyBytes").GetInt64() == 0 && v.GetProperty("resync").ValueKind == JsonValueKind.Null;

    public static string? Str(JsonElement v, string name) => v.GetProperty(name).GetString();

    /// <summary>status --json connectionEntries: how many times the volume's connection entered each state.</summary>
    public static Dictionary<string, long> ConnectionEntries(JsonElement v) =>
        v.GetProperty("connectionEntries").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt64(), StringComparer.Ordinal);

    public static Task<ToolResult> CliAsync(DaemonProcess daemon, params string[] verb) =>
        Tool.RunAsync(RepoLayout.DaemonBinary, [.. verb, "--admin", daemon.AdminAddress], Tool.DefaultTimeout);

    /// <summary>Stops both daemons (SIGTERM, exit 0) and returns the sha256 of both images.</summary>
    public async Task<(string A, string B)> StopAndHashAsync()
    {
        if (A is not null)
        {
            await A.StopAsync();
        }

        if (B is not null)
        {
            await B.StopAsync();
        }

        return (await TestData.Sha256OfFileAsync(ImageA), await TestData.Sha256OfFileAsync(ImageB));
    }

    /// <summary>
    /// Mounts a tmpfs of <paramref name="size"/> on node <paramref name="node"/>'s data dir (root, as make test runs);
    /// call it before that node starts. The pair unmounts it when disposed, so its directory can be removed.
    /// </summary>
    public async Task<string> MountTmpfsAsync(char node, string size)
    {
        var mountPoint = DaemonProcess.DataDirOf(node == 'a' ? DirA : DirB);
        Directory.CreateDirectory(mountPoint);
        var mount = await Tool.RunAsync("mount", "-t", "tmpfs", "-o", $"size={size}", "tmpfs", mountPoint);
        Assert.True(mount.ExitCode == 0, $"this test mounts a tmpfs and needs root: {mount}");
        _mounts.Add(mountPoint);
        return mountPoint;
    }

    public async ValueTask DisposeAsync()
    {
        if (A is not null)
        {
            await A.DisposeAsync();
        }

        if (B is not null)
        {
            await B.DisposeAsync();
        }

        foreach (var mountPoint in _mounts)
        {
            await Tool.RunAsync("umount", "-l", mountPoint);
        }

        DirA.Dispose();
        DirB.Dispose();
    }
}
