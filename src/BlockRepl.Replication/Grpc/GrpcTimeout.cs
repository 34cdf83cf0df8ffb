using System.Globalization;

namespace BlockRepl.Replication.Grpc;

/// <summary>
/// The <c>grpc-timeout</c> header (grpc/doc/PROTOCOL-HTTP2.md):
/// <code>
///   Timeout      -> "grpc-timeout" TimeoutValue TimeoutUnit
///   TimeoutValue -> {positive integer as ASCII string of at most 8 digits}
///   TimeoutUnit  -> Hour / Minute / Second / Millisecond / Microsecond / Nanosecond
///   Hour -> "H"  Minute -> "M"  Second -> "S"  Millisecond -> "m"  Microsecond -> "u"  Nanosecond -> "n"
/// </code>
/// </summary>
internal static class GrpcTimeout
{
    public const string HeaderName = "grpc-timeout";

    private const long MaxValue = 99_999_999;

    // Units from finest to coarsest, with their length in ticks (100 ns); nanoseconds are handled apart.
    private static readonly (char Unit, long Ticks)[] Units =
    [
        ('u', TimeSpan.TicksPerMicrosecond),
        ('m', TimeSpan.TicksPerMillisecond),
        ('S', TimeSpan.TicksPerSecond),
        ('M', TimeSpan.TicksPerMinute),
        ('H', TimeSpan.TicksPerHour),
    ];

    /// <summary>Parses a header value; false for anything that does not follow the grammar.</summary>
    public static bool TryParse(ReadOnlySpan<char> value, out TimeSpan timeout)
    {
        timeout = default;
        if (value.Length < 2 || value.Length > 9)
        {
            return false;
        }

        var digits = value[..^1];
        foreach (var c in digits)
        {
            if (!char.IsAsciiDigit(c))
            {
                return false;
            }
        }

        var amount = long.Parse(digits, NumberStyles.None, CultureInfo.InvariantCulture);
        long ticks;
        switch (value[^1])
        {
            case 'n':
                // Round up so that a positive timeout never becomes zero.
                ticks = (amount + 99) / 100;
                break;
            case 'u':
                ticks = amount * TimeSpan.TicksPerMicrosecond;
                break;
            case 'm':
                ticks = amount * TimeSpan.TicksPerMillisecond;
                break;
            case 'S':
                ticks = amount * TimeSpan.TicksPerSecond;
                break;
            case 'M':
                ticks = amount * TimeSpan.TicksPerMinute;
                break;
            case 'H':
                // 99999999 hours is about 3.6e17 ticks: no overflow.
                ticks = amount * TimeSpan.TicksPerHour;
                break;
            default:
                return false;
        }

        timeout = TimeSpan.FromTicks(ticks);
        return true;
    }

    /// <summary>
    /// Formats a positive timeout in the finest unit whose value fits in 8 digits, rounded up so the peer
    /// never sees a shorter timeout than the caller's (a zero or negative timeout becomes "1n").
    /// </summary>
    public static string Format(TimeSpan timeout)
    {
        var ticks = timeout.Ticks;
        if (ticks <= 0)
        {
            return "1n";
        }

        if (ticks <= MaxValue / 100)
        {
            return (ticks * 100).ToString(CultureInfo.InvariantCulture) + "n";
        }

        foreach (var (unit, unitTicks) in Units)
        {
            var amount = (ticks + unitTicks - 1) / unitTicks;
            if (amount <= MaxValue)
            {
                return amount.ToString(CultureInfo.InvariantCulture) + unit;
            }
        }

        return MaxValue.ToString(CultureInfo.InvariantCulture) + "H";
    }
}
