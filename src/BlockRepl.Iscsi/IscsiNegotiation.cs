using System.Globalization;

namespace BlockRepl.Iscsi;

/// <summary>
/// Operational parameters of a connection and session (RFC 7143 13), and the negotiation of each key: the
/// initiator offers, the target answers with the result of the key's function (min, max, AND, OR, list).
/// </summary>
internal sealed class IscsiNegotiation
{
    private const int OurMaxBurstLength = 1024 * 1024;
    private const int OurFirstBurstLength = 256 * 1024;

    public bool HeaderDigest { get; private set; }

    public bool DataDigest { get; private set; }

    /// <summary>The initiator's MaxRecvDataSegmentLength: the largest data segment we may send it.</summary>
    public int MaxSendDataSegmentLength { get; private set; } = 8192;

    public int FirstBurstLength { get; private set; } = 64 * 1024;

    public int MaxBurstLength { get; private set; } = 256 * 1024;

    public bool ImmediateData { get; private set; } = true;

    public bool InitialR2T { get; private set; } = true;

    /// <summary>
    /// Answers one operational key (RFC 7143 13.x), or returns null for a key this class does not own. A value
    /// that is not valid for the key is answered "Reject" (6.2.1).
    /// </summary>
    public string? Answer(string key, string value)
    {
        switch (key)
        {
            case "HeaderDigest":
            case "DataDigest":
                {
                    // List: the first of the initiator's choices that we support (None or CRC32C).
                    var choice = value.Split(',').FirstOrDefault(v => v is "None" or "CRC32C");
                    if (choice is null)
                    {
                        return "Reject";
                    }

                    if (key == "HeaderDigest")
                    {
                        HeaderDigest = choice == "CRC32C";
                    }
                    else
                    {
                        DataDigest = choice == "CRC32C";
                    }

                    return choice;
                }

            case "MaxRecvDataSegmentLength":
                if (!TryNumber(value, 512, 16777215, out var mrdsl))
                {
                    return "Reject";
                }

                MaxSendDataSegmentLength = mrdsl;
                return null; // declarative: our own value is declared separately
            case "FirstBurstLength":
                if (!TryNumber(value, 512, 16777215, out var fbl))
                {
                    return "Reject";
                }

                FirstBurstLength = Math.Min(fbl, OurFirstBurstLength);
                return FirstBurstLength.ToString(CultureInfo.InvariantCulture);
            case "MaxBurstLength":
                if (!TryNumber(value, 512, 16777215, out var mbl))
                {
                    return "Reject";
                }

                MaxBurstLength = Math.Min(mbl, OurMaxBurstLength);
                return MaxBurstLength.ToString(CultureInfo.InvariantCulture);
            case "ImmediateData":
                if (!TryBool(value, out var immediate))
                {
                    return "Reject";
                }

                ImmediateData = immediate; // AND with our Yes
                return immediate ? "Yes" : "No";
            case "InitialR2T":
                if (!TryBool(value, out var initial))
                {
                    return "Reject";
                }

                InitialR2T = initial; // OR with our No
                return initial ? "Yes" : "No";
            case "MaxOutstandingR2T":
            case "MaxConnections":
                return TryNumber(value, 1, 65535, out _) ? "1" : "Reject";
            case "ErrorRecoveryLevel":
                return TryNumber(value, 0, 2, out _) ? "0" : "Reject";
            case "DataPDUInOrder":
            case "DataSequenceInOrder":
                return TryBool(value, out _) ? "Yes" : "Reject"; // OR with our Yes
            case "DefaultTime2Wait":
                return TryNumber(value, 0, 3600, out var wait) ? Math.Max(wait, 2).ToString(CultureInfo.InvariantCulture) : "Reject";
            case "DefaultTime2Retain":
                return TryNumber(value, 0, 3600, out var retain) ? Math.Min(retain, 20).ToString(CultureInfo.InvariantCulture) : "Reject";
            case "IFMarker":
            case "OFMarker":
                return TryBool(value, out _) ? "No" : "Reject"; // AND with our No (RFC 3720; obsolete in 7143)
            case "OFMarkInt":
            case "IFMarkInt":
                return "Irrelevant";
            default:
                return null;
        }
    }

    /// <summary>Keeps the invariant FirstBurstLength &lt;= MaxBurstLength (RFC 7143 13.14) after both were negotiated.</summary>
    public void Settle()
    {
        if (FirstBurstLength > MaxBurstLength)
        {
            FirstBurstLength = MaxBurstLength;
        }
    }

    private static bool TryNumber(string value, int min, int max, out int number) =>
        int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out number) && number >= min && number <= max;

    private static bool TryBool(string value, out bool result)
    {
        result = value == "Yes";
        return value is "Yes" or "No";
    }
}
