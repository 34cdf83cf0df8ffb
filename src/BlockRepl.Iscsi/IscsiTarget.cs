using System.Net;
using BlockRepl.Core;

namespace BlockRepl.Iscsi;

/// <summary>A volume as an iSCSI target: one LUN (0) under the target name <paramref name="Iqn"/>.</summary>
public sealed record IscsiTarget(string Iqn, Volume Volume)
{
    /// <summary>The default prefix of target names: <c>iqn.2026-11.io.blockrepl:VOLUME</c>.</summary>
    public const string DefaultIqnPrefix = "iqn.2026-11.io.blockrepl";

    public static string DefaultIqn(string volumeName, string prefix = DefaultIqnPrefix) =>
        $"{prefix}:{volumeName.ToLowerInvariant()}";

    /// <summary>
    /// True for a name an initiator can use (RFC 7143 4.2.7.2: "iqn." or "eui." or "naa." names of lowercase
    /// letters, digits, '-', '.', ':'; at most 223 bytes).
    /// </summary>
    public static bool IsValidName(string name) =>
        name.Length is > 4 and <= 223
        && (name.StartsWith("iqn.", StringComparison.Ordinal) || name.StartsWith("eui.", StringComparison.Ordinal) || name.StartsWith("naa.", StringComparison.Ordinal))
        && name.All(c => c is (>= 'a' and <= 'z') or (>= '0' and <= '9') or '-' or '.' or ':');
}

/// <summary>A CHAP user name and secret (RFC 1994; RFC 7143 12.1.3).</summary>
public sealed record IscsiChapSecret(string User, string Secret)
{
    /// <summary>Parses <c>USER:SECRET</c>; secrets must be 12 to 255 characters (RFC 7143 12.1.3 recommends at least 12 bytes).</summary>
    public static IscsiChapSecret Parse(string text)
    {
        var colon = text.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0 || colon == text.Length - 1)
        {
            throw new FormatException($"'{text}' is not USER:SECRET");
        }

        var secret = text[(colon + 1)..];
        if (secret.Length is < 12 or > 255)
        {
            throw new FormatException("a CHAP secret must be 12 to 255 characters long");
        }

        return new IscsiChapSecret(text[..colon], secret);
    }

    public override string ToString() => $"{User}:***";
}

/// <summary>The settings of the iSCSI front end.</summary>
public sealed record IscsiServerOptions
{
    /// <summary>When set, initiators must authenticate with CHAP as this user.</summary>
    public IscsiChapSecret? Chap { get; init; }

    /// <summary>When set, the target answers an initiator's mutual CHAP challenge as this user.</summary>
    public IscsiChapSecret? MutualChap { get; init; }

    /// <summary>Connections beyond this are refused.</summary>
    public int MaxConnections { get; init; } = 64;
}

/// <summary>A listening address of the iSCSI server.</summary>
public static class IscsiEndpoint
{
    public static IPEndPoint Parse(string text)
    {
        if (IPEndPoint.TryParse(text, out var ip) && text.Contains(':', StringComparison.Ordinal))
        {
            return ip;
        }

        throw new FormatException($"'{text}' is not an endpoint: use HOST:PORT (e.g. 127.0.0.1:3260)");
    }
}
