using System.Globalization;

namespace BlockRepl;

/// <summary>Sizes as users write them: bytes, or a number with K, M, G, T (binary units; "GiB" and "G" alike).</summary>
internal static class ByteSize
{
    public static long Parse(string text)
    {
        var s = text.Trim();
        long multiplier = 1;
        var unitStart = s.Length;
        while (unitStart > 0 && char.IsAsciiLetter(s[unitStart - 1]))
        {
            unitStart--;
        }

        var unit = s[unitStart..].ToUpperInvariant();
        multiplier = unit switch
        {
            "" or "B" => 1,
            "K" or "KB" or "KIB" => 1L << 10,
            "M" or "MB" or "MIB" => 1L << 20,
            "G" or "GB" or "GIB" => 1L << 30,
            "T" or "TB" or "TIB" => 1L << 40,
            _ => throw new FormatException($"'{text}' is not a size: use bytes or a number with K, M, G or T"),
        };

        if (!long.TryParse(s[..unitStart], NumberStyles.None, CultureInfo.InvariantCulture, out var number) || number <= 0)
        {
            throw new FormatException($"'{text}' is not a size: use bytes or a number with K, M, G or T");
        }

        try
        {
            return checked(number * multiplier);
        }
        catch (OverflowException)
        {
            throw new FormatException($"'{text}' is too large");
        }
    }

    /// <summary>One decimal in the largest unit that fits (progress lines): "12.3 MiB".</summary>
    public static string Human(long bytes) => bytes switch
    {
        >= 1L << 40 => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 40):F1} TiB"),
        >= 1L << 30 => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):F1} GiB"),
        >= 1L << 20 => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 20):F1} MiB"),
        >= 1L << 10 => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 10):F1} KiB"),
        _ => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes} B"),
    };

    public static string Format(long bytes) => bytes switch
    {
        >= 1L << 40 when bytes % (1L << 40) == 0 => $"{bytes >> 40} TiB",
        >= 1L << 30 when bytes % (1L << 30) == 0 => $"{bytes >> 30} GiB",
        >= 1L << 20 when bytes % (1L << 20) == 0 => $"{bytes >> 20} MiB",
        >= 1L << 10 when bytes % (1L << 10) == 0 => $"{bytes >> 10} KiB",
        _ => $"{bytes} bytes",
    };
}
