using System.Text.Json;
using System.Text.Json.Serialization;
using BlockRepl.Core;

namespace BlockRepl;

/// <summary>
/// The settings of <c>blockrepl serve</c>. Precedence: command-line flag, then the JSON config file, then
/// the default. Config keys are the flag names in camelCase (<c>dataDir</c>, <c>volume</c>, <c>image</c>,
/// <c>size</c>, <c>role</c>, <c>nbd</c>, <c>admin</c>, <c>iscsi</c>, <c>iscsiIqn</c>, <c>iscsiChap</c>, <c>iscsiMutualChap</c>).
/// </summary>
internal sealed record ServeOptions
{
    public string DataDir { get; set; } = "./data";

    public string Volume { get; set; } = "vol0";

    public string? Image { get; set; }

    public string? Size { get; set; }

    public string Role { get; set; } = "primary";

    public string Nbd { get; set; } = "127.0.0.1:10809";

    public string? Admin { get; set; }

    /// <summary>iSCSI listen address (HOST:PORT), or "off"/null (the default): no iSCSI.</summary>
    public string? Iscsi { get; set; }

    /// <summary>The volume's iSCSI target name; default iqn.2026-11.io.blockrepl:VOLUME.</summary>
    public string? IscsiIqn { get; set; }

    /// <summary>USER:SECRET initiators must authenticate with (CHAP); null for AuthMethod None.</summary>
    public string? IscsiChap { get; set; }

    /// <summary>USER:SECRET the target answers a mutual CHAP challenge with.</summary>
    public string? IscsiMutualChap { get; set; }

    /// <summary>Replication listen address (HOST:PORT), or null/"off" for none.</summary>
    public string? Listen { get; set; }

    /// <summary>The peer's replication address (http://HOST:PORT), or null for a standalone volume.</summary>
    public string? Peer { get; set; }

    public string Mode { get; set; } = "sync";

    public string OnPeerLoss { get; set; } = "continue";

    /// <summary>How a resync this node sources sends dirty ranges: data (all of it) or checksum (only chunks whose hash differs on the peer).</summary>
    public string Resync { get; set; } = "data";

    /// <summary>A peer silent this long is dead (default 2s).</summary>
    public string PeerTimeout { get; set; } = "2s";

    /// <summary>Bound of the send queue (async: past it the link goes ahead; sync: writers wait). Default 64M.</summary>
    public string SendQueue { get; set; } = "64M";

    /// <summary>Activity-log capacity in 4 MiB extents, or "off". Default 1024.</summary>
    public string ActivityLog { get; set; } = "1024";

    /// <summary>detach (default): a local I/O error on a connected sync primary detaches the disk (diskless); pass: the client gets it.</summary>
    public string OnIoError { get; set; } = "detach";

    /// <summary>Test hook: while this file exists, the local image fails every operation with EIO.</summary>
    public string? FaultInjectionFile { get; set; }

    public bool OnIoErrorDetach => OnIoError switch
    {
        "detach" => true,
        "pass" => false,
        _ => throw new UserError($"--on-io-error '{OnIoError}': expected detach or pass"),
    };

    /// <summary>Resync rate cap in bytes per second, or 0 for none (the default).</summary>
    public string ResyncRate { get; set; } = "0";

    /// <summary>Rate the resync keeps while the application writes (default 64M per second; 0: no pacing).</summary>
    public string ResyncMinRate { get; set; } = "64M";

    public static ServeOptions Load(string? configPath)
    {
        if (configPath is null)
        {
            return new ServeOptions();
        }

        try
        {
            var json = File.ReadAllBytes(configPath);
            return JsonSerializer.Deserialize(json, ServeOptionsJsonContext.Default.ServeOptions)
                ?? throw new UserError($"config {configPath} is empty");
        }
        catch (FileNotFoundException)
        {
            throw new UserError($"config {configPath} does not exist");
        }
        catch (JsonException ex)
        {
            throw new UserError($"config {configPath} is not valid: {ex.Message}");
        }
    }

    public string ImagePath => Path.GetFullPath(Image ?? Path.Combine(DataDir, Volume + ".img"));

    public string AdminAddress => Admin ?? DefaultAdmin(DataDir);

    public static string DefaultAdmin(string dataDir) => "unix:" + Path.GetFullPath(Path.Combine(dataDir, "admin.sock"));

    public ReplicationOptions ToReplicationOptions()
    {
        System.Net.IPEndPoint? listen = null;
        if (Listen is not null && Listen != "off")
        {
            if (!System.Net.IPEndPoint.TryParse(Listen, out listen) || !Listen.Contains(':', StringComparison.Ordinal))
            {
                throw new UserError($"--listen '{Listen}' is not HOST:PORT (e.g. 127.0.0.1:7800)");
            }
        }

        Uri? peer = null;
        if (Peer is not null && Peer != "off")
        {
            if (!Uri.TryCreate(Peer, UriKind.Absolute, out peer) || peer.Scheme != Uri.UriSchemeHttp || peer.Port <= 0 || peer.AbsolutePath != "/")
            {
                throw new UserError($"--peer '{Peer}' is not http://HOST:PORT (e.g. http://10.0.0.2:7800)");
            }
        }

        var mode = Mode switch
        {
            "sync" => Core.Replication.ReplicationMode.Sync,
            "async" => Core.Replication.ReplicationMode.Async,
            _ => throw new UserError($"--mode '{Mode}': expected sync or async"),
        };
        var onPeerLoss = OnPeerLoss switch
        {
            "continue" => Core.Replication.PeerLossPolicy.Continue,
            "block" => Core.Replication.PeerLossPolicy.Block,
            _ => throw new UserError($"--on-peer-loss '{OnPeerLoss}': expected continue or block"),
        };
        var timeout = ParseDuration(PeerTimeout, "--peer-timeout");
        long queue;
        try
        {
            queue = ByteSize.Parse(SendQueue);
        }
        catch (FormatException ex)
        {
            throw new UserError($"--send-queue: {ex.Message}");
        }

        if (queue < LocksAndLimits.MinSendQueueBytes)
        {
            throw new UserError($"--send-queue {SendQueue} is too small: at least 2M");
        }

        var checksumResync = Resync switch
        {
            "data" => false,
            "checksum" => true,
            _ => throw new UserError($"--resync '{Resync}': expected data or checksum"),
        };

        var resyncSettings = new Core.Replication.ResyncSettings
        {
            MaxBytesPerSecond = ParseRate(ResyncRate, "--resync-rate"),
            MinBytesPerSecond = ParseRate(ResyncMinRate, "--resync-min-rate"),
        };
        return new ReplicationOptions(listen, peer, mode, onPeerLoss, timeout, queue, resyncSettings, checksumResync);
    }

    /// <summary>A rate such as 100M (bytes per second), or 0 for none.</summary>
    private static long ParseRate(string text, string flag)
    {
        if (text == "0")
        {
            return 0;
        }

        try
        {
            return ByteSize.Parse(text);
        }
        catch (FormatException ex)
        {
            throw new UserError($"{flag}: {ex.Message} (bytes per second, e.g. 100M, or 0 for none)");
        }
    }

    internal static TimeSpan ParseDuration(string text, string flag)
    {
        var units = new (string Suffix, double Ms)[] { ("ms", 1), ("s", 1000), ("m", 60000) };
        foreach (var (suffix, ms) in units)
        {
            if (text.EndsWith(suffix, StringComparison.Ordinal)
                && double.TryParse(text[..^suffix.Length], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var value)
                && value > 0 && value * ms >= 100 && value * ms <= 600_000)
            {
                return TimeSpan.FromMilliseconds(value * ms);
            }
        }

        throw new UserError($"{flag} '{text}' is not a duration between 100ms and 10m (e.g. 2s, 500ms)");
    }

    /// <summary>The iSCSI flags, validated; null when <c>--iscsi off</c>.</summary>
    public IscsiSettings? ToIscsiSettings()
    {
        if (Iscsi is null || string.Equals(Iscsi, "off", StringComparison.Ordinal))
        {
            if (IscsiChap is not null || IscsiMutualChap is not null || IscsiIqn is not null)
            {
                throw new UserError("--iscsi-iqn, --iscsi-chap and --iscsi-mutual-chap need --iscsi HOST:PORT");
            }

            return null;
        }

        System.Net.IPEndPoint endpoint;
        try
        {
            endpoint = BlockRepl.Iscsi.IscsiEndpoint.Parse(Iscsi);
        }
        catch (FormatException ex)
        {
            throw new UserError($"--iscsi: {ex.Message}");
        }

        var iqn = IscsiIqn ?? BlockRepl.Iscsi.IscsiTarget.DefaultIqn(Volume);
        if (!BlockRepl.Iscsi.IscsiTarget.IsValidName(iqn))
        {
            throw new UserError(IscsiIqn is null
                ? $"volume name '{Volume}' does not make a valid iSCSI name ({iqn}): give one with --iscsi-iqn"
                : $"--iscsi-iqn '{iqn}' is not a valid iSCSI name (iqn.YYYY-MM.reversed.domain[:name], lowercase)");
        }

        BlockRepl.Iscsi.IscsiChapSecret? chap = null;
        BlockRepl.Iscsi.IscsiChapSecret? mutual = null;
        try
        {
            chap = IscsiChap is null ? null : BlockRepl.Iscsi.IscsiChapSecret.Parse(IscsiChap);
        }
        catch (FormatException ex)
        {
            throw new UserError($"--iscsi-chap: {ex.Message}");
        }

        try
        {
            mutual = IscsiMutualChap is null ? null : BlockRepl.Iscsi.IscsiChapSecret.Parse(IscsiMutualChap);
        }
        catch (FormatException ex)
        {
            throw new UserError($"--iscsi-mutual-chap: {ex.Message}");
        }

        if (mutual is not null && chap is null)
        {
            throw new UserError("--iscsi-mutual-chap needs --iscsi-chap (mutual CHAP follows the initiator's own CHAP)");
        }

        if (mutual is not null && chap is not null && mutual.Secret == chap.Secret)
        {
            throw new UserError("--iscsi-mutual-chap must use a different secret than --iscsi-chap (RFC 7143 12.1.3)");
        }

        return new IscsiSettings(endpoint, iqn, new BlockRepl.Iscsi.IscsiServerOptions { Chap = chap, MutualChap = mutual });
    }

    public VolumeOptions ToVolumeOptions()
    {
        long size = 0;
        if (Size is not null)
        {
            try
            {
                size = ByteSize.Parse(Size);
            }
            catch (FormatException ex)
            {
                throw new UserError($"--size: {ex.Message}");
            }
        }

        VolumeRole role;
        try
        {
            role = StateNames.ParseRole(Role);
        }
        catch (FormatException ex)
        {
            throw new UserError($"--role: {ex.Message}");
        }

        int alExtents;
        if (string.Equals(ActivityLog, "off", StringComparison.Ordinal))
        {
            alExtents = 0;
        }
        else if (!int.TryParse(ActivityLog, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out alExtents)
            || alExtents is < VolumeOptions.MinActivityLogExtents or > MetaFile.MaxAlExtents)
        {
            throw new UserError($"--activity-log {ActivityLog}: use off or {VolumeOptions.MinActivityLogExtents}..{MetaFile.MaxAlExtents} extents of 4 MiB");
        }

        return new VolumeOptions { Name = Volume, ImagePath = ImagePath, SizeBytes = size, InitialRole = role, ActivityLogExtents = alExtents };
    }
}

/// <summary>The replication flags, validated.</summary>
internal sealed record ReplicationOptions(
    System.Net.IPEndPoint? Listen,
    Uri? Peer,
    Core.Replication.ReplicationMode Mode,
    Core.Replication.PeerLossPolicy OnPeerLoss,
    TimeSpan PeerTimeout,
    long SendQueueBytes,
    Core.Replication.ResyncSettings Resync,
    bool ChecksumResync = false);

/// <summary>The iSCSI flags, validated.</summary>
internal sealed record IscsiSettings(System.Net.IPEndPoint Endpoint, string Iqn, BlockRepl.Iscsi.IscsiServerOptions Server);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, ReadCommentHandling = JsonCommentHandling.Skip,
    AllowTrailingCommas = true, UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow)]
[JsonSerializable(typeof(ServeOptions))]
internal sealed partial class ServeOptionsJsonContext : JsonSerializerContext;
